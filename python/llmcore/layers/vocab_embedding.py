"""Token embedding and LM head, vocab-parallel: rank r owns rows [r*n, (r+1)*n) of the
vocabulary, n = ceil(vocab / tp_size); rows past the real vocabulary are zero padding
(dropped from the logits), so the vocabulary need not divide by tp_size."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from llmcore.layers import cpu_gemm
from llmcore.layers.context import LayerContext
from llmcore.layers.utils import set_weight_attrs


class VocabParallelEmbedding(nn.Module):
    """weight [vocab_per_partition, hidden]; rank r owns rows [r*n, (r+1)*n)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, *, ctx: LayerContext):
        super().__init__()
        self.ctx = ctx
        self.prefix = ctx.prefix
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.tp_size, self.tp_rank = ctx.tp_size, ctx.tp_rank
        self.num_embeddings_per_partition = -(-num_embeddings // ctx.tp_size)
        self.vocab_start = ctx.tp_rank * self.num_embeddings_per_partition
        self.vocab_end = min(self.vocab_start + self.num_embeddings_per_partition,
                             num_embeddings)
        if ctx.get_quant_method(self) is not None:
            raise ValueError(f"{ctx.prefix or type(self).__name__}: quantized embeddings / LM "
                             "heads are not supported; the quantization config must return "
                             "None for this layer")
        self.weight = nn.Parameter(torch.empty(self.num_embeddings_per_partition, embedding_dim,
                                               dtype=ctx.dtype, device=ctx.device),
                                   requires_grad=False)
        set_weight_attrs(self.weight, {"weight_loader": self.weight_loader, "output_dim": 0})

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
        if loaded_weight.dim() == 2 and loaded_weight.shape[1] != param.shape[1]:
            raise ValueError(f"{self.prefix}: embedding width {loaded_weight.shape[1]} != "
                             f"{param.shape[1]}")
        n = max(0, min(self.num_embeddings_per_partition,
                       loaded_weight.shape[0] - self.vocab_start))
        if n > 0:  # with much padding, the last ranks own no real rows
            param.data[:n].copy_(loaded_weight.narrow(0, self.vocab_start, n))
        if n < param.shape[0]:
            param.data[n:].zero_()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        # Each rank embeds the ids it owns (zeros elsewhere); the sum over ranks is the
        # full embedding.
        owned = (input_ids >= self.vocab_start) & (input_ids < self.vocab_end)
        local = torch.where(owned, input_ids - self.vocab_start, 0)
        out = F.embedding(local, self.weight).masked_fill_(~owned.unsqueeze(-1), 0)
        return self.ctx.tp.all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """Output projection hidden -> vocab. `tie_weights(embedding)` shares the embedding's
    parameter (tie_word_embeddings)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, *, ctx: LayerContext,
                 bias: bool = False):
        super().__init__(num_embeddings, embedding_dim, ctx=ctx)
        self.tied = False
        self.packed_weight: Optional[torch.Tensor] = None  # see process_weights_after_loading
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.num_embeddings_per_partition,
                                                 dtype=self.weight.dtype, device=self.weight.device),
                                     requires_grad=False)
            set_weight_attrs(self.bias, {"weight_loader": self.weight_loader})
        else:
            self.register_parameter("bias", None)

    def tie_weights(self, embed: VocabParallelEmbedding) -> "ParallelLMHead":
        self.weight = embed.weight
        self.tied = True
        return self

    def process_weights_after_loading(self) -> None:
        # CPU fp32: the logits GEMM through oneDNN with a packed weight (see cpu_gemm). A
        # tied weight is also the embedding table, so it gets a packed copy; an untied one
        # is replaced (no second copy of vocab x hidden floats).
        if not self.tied:
            self.packed_weight = cpu_gemm.pack_in_place(self)
        elif cpu_gemm.can_pack(self.weight):
            self.packed_weight = cpu_gemm.pack(self.weight)

    def forward(self, input_):
        raise RuntimeError("LM head weights are used through LogitsProcessor / compute_logits")


class LogitsProcessor(nn.Module):
    """hidden [N, hidden] -> float32 logits [N, vocab] (vocab padding dropped)."""

    def __init__(self, vocab_size: int, scale: float = 1.0):
        super().__init__()
        self.vocab_size = vocab_size
        self.scale = scale

    def forward(self, lm_head: ParallelLMHead, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = lm_head.weight if lm_head.packed_weight is None else lm_head.packed_weight
        logits = cpu_gemm.linear(hidden_states, weight, lm_head.bias)
        if lm_head.tp_size > 1:  # each rank has its vocab slice: [rank 0 | rank 1 | ...]
            logits = lm_head.ctx.tp.all_gather(logits, -1)
        if logits.shape[-1] != self.vocab_size:
            logits = logits[..., :self.vocab_size]
        if logits.dtype != torch.float32:
            logits = logits.float()
        if self.scale != 1.0:
            logits = logits.mul_(self.scale)
        return logits
