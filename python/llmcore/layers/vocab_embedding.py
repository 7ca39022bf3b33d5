"""Token embedding and LM head (vocab-parallel shaped; tp_size=1 today)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from llmcore.layers import cpu_gemm
from llmcore.layers.utils import set_weight_attrs


class VocabParallelEmbedding(nn.Module):
    """weight [vocab_per_partition, hidden]; rank r owns rows [r*n, (r+1)*n)."""

    def __init__(self, num_embeddings: int, embedding_dim: int,
                 params_dtype: Optional[torch.dtype] = None, device=None,
                 tp_size: int = 1, tp_rank: int = 0):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.tp_size, self.tp_rank = tp_size, tp_rank
        self.num_embeddings_per_partition = -(-num_embeddings // tp_size)
        self.vocab_start = tp_rank * self.num_embeddings_per_partition
        self.weight = nn.Parameter(torch.empty(self.num_embeddings_per_partition, embedding_dim,
                                               dtype=params_dtype or torch.get_default_dtype(),
                                               device=device), requires_grad=False)
        set_weight_attrs(self.weight, {"weight_loader": self.weight_loader, "output_dim": 0})

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
        n = min(self.num_embeddings_per_partition, loaded_weight.shape[0] - self.vocab_start)
        if loaded_weight.shape[1] != param.shape[1]:
            raise ValueError(f"embedding width {loaded_weight.shape[1]} != {param.shape[1]}")
        param.data[:n].copy_(loaded_weight.narrow(0, self.vocab_start, n))
        if n < param.shape[0]:
            param.data[n:].zero_()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # tp_size > 1 would mask out-of-range ids and all-reduce.
        return F.embedding(input_ids, self.weight)


class ParallelLMHead(VocabParallelEmbedding):
    """Output projection hidden -> vocab. `tie_weights(embedding)` shares the embedding's
    parameter (tie_word_embeddings)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, bias: bool = False, **kw):
        super().__init__(num_embeddings, embedding_dim, **kw)
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
        # tp_size > 1 would all-gather here.
        if logits.shape[-1] != self.vocab_size:
            logits = logits[..., :self.vocab_size]
        if logits.dtype != torch.float32:
            logits = logits.float()
        if self.scale != 1.0:
            logits = logits.mul_(self.scale)
        return logits
