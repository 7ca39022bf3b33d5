"""Linear layers sharded for tensor parallelism by their LayerContext, with a quant hook.

Weights are stored as [out_features, in_features] (the HF/checkpoint layout). Every weight
parameter carries a `weight_loader(param, loaded_weight[, shard_id])` that knows how to
take this rank's slice of a checkpoint tensor and where it goes inside a fused parameter:

- ColumnParallelLinear: output dim sharded (slice rows of the checkpoint tensor).
- MergedColumnParallelLinear: several column-parallel outputs fused (gate_up_proj);
  shard_id is the index of the logical sub-matrix.
- QKVParallelLinear: q, k, v fused; shard_id is "q", "k" or "v".
- RowParallelLinear: input dim sharded (slice columns); the partial outputs would be
  all-reduced (identity at tp_size=1).
- ReplicatedLinear: not sharded.

Every layer is built with a LayerContext (layers/context.py): tp_rank/tp_size fix the
shard it owns, dtype/device its parameters, and `ctx.get_quant_method(layer)` its
quantization method (a LinearMethodBase; None = UnquantizedLinearMethod): it creates the
parameters and computes the product. `process_weights_after_loading` runs once all
weights are in (the model loader calls it), e.g. to repack for a kernel.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from llmcore.layers import cpu_gemm
from llmcore.layers.context import LayerContext, divide, per_rank_kv_heads
from llmcore.layers.utils import set_weight_attrs


class LinearMethodBase:
    """How a linear layer stores its weights and computes x @ W^T (+ b)."""

    def create_weights(self, layer: "LinearBase", input_size_per_partition: int,
                       output_partition_sizes: list[int], params_dtype: torch.dtype,
                       device) -> None:
        raise NotImplementedError

    def apply(self, layer: "LinearBase", x: torch.Tensor,
              bias: Optional[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def process_weights_after_loading(self, layer: "LinearBase") -> None:
        pass


class UnquantizedLinearMethod(LinearMethodBase):
    def create_weights(self, layer, input_size_per_partition, output_partition_sizes,
                       params_dtype, device) -> None:
        weight = nn.Parameter(torch.empty(sum(output_partition_sizes), input_size_per_partition,
                                          dtype=params_dtype, device=device), requires_grad=False)
        set_weight_attrs(weight, {"input_dim": 1, "output_dim": 0})
        layer.register_parameter("weight", weight)

    def apply(self, layer, x, bias):
        return cpu_gemm.linear(x, layer.weight, bias)

    def process_weights_after_loading(self, layer) -> None:
        # CPU fp32 (bf16 where supported): pack for oneDNN once (see cpu_gemm)
        cpu_gemm.pack_in_place(layer)


class LinearBase(nn.Module):
    def __init__(self, input_size: int, output_size: int, *, ctx: LayerContext,
                 bias: bool = False):
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.ctx = ctx
        self.tp_size, self.tp_rank = ctx.tp_size, ctx.tp_rank
        self.prefix = ctx.prefix
        self.params_dtype = ctx.dtype
        self.device = ctx.device
        self.has_bias = bias

    @property
    def what(self) -> str:
        return self.prefix or type(self).__name__

    def _create(self, input_size_per_partition: int, output_partition_sizes: list[int],
                bias_size: int) -> None:
        # Asked once the shard sizes are known, so a method can size its own parameters.
        self.quant_method = self.ctx.get_quant_method(self) or UnquantizedLinearMethod()
        self.quant_method.create_weights(self, input_size_per_partition, output_partition_sizes,
                                         self.params_dtype, self.device)
        self.weight.weight_loader = self.weight_loader
        if self.has_bias:
            self.bias = nn.Parameter(torch.zeros(bias_size, dtype=self.params_dtype,
                                                 device=self.device), requires_grad=False)
            set_weight_attrs(self.bias, {"output_dim": 0, "weight_loader": self.weight_loader})
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_method.apply(self, x, self.bias)

    def extra_repr(self) -> str:
        return (f"in={self.input_size}, out={self.output_size}, bias={self.bias is not None}, "
                f"tp_size={self.tp_size}, tp_rank={self.tp_rank}")


def _shard(loaded: torch.Tensor, dim: int, rank: int, n: int, what: str) -> torch.Tensor:
    if loaded.dim() <= dim or loaded.shape[dim] < (rank + 1) * n:
        raise ValueError(f"{what}: checkpoint tensor of shape {tuple(loaded.shape)} has no "
                         f"shard [{rank * n}, {(rank + 1) * n}) on dim {dim}")
    return loaded.narrow(dim, rank * n, n)


def _check_copy(dst: torch.Tensor, src: torch.Tensor, what: str) -> None:
    if dst.shape != src.shape:
        raise ValueError(f"{what}: checkpoint shard shape {tuple(src.shape)} does not match "
                         f"parameter shape {tuple(dst.shape)}")
    dst.copy_(src)


def _split_fused(loaded: torch.Tensor, sizes: list[int], what: str) -> list[torch.Tensor]:
    """A checkpoint tensor that already holds several fused projections (rows) -> the
    full (unsharded) tensor of each."""
    if loaded.dim() == 0 or loaded.shape[0] != sum(sizes):
        raise ValueError(f"{what}: fused checkpoint tensor of shape {tuple(loaded.shape)} does "
                         f"not have {sum(sizes)} rows ({' + '.join(map(str, sizes))})")
    return list(loaded.split(sizes, dim=0))


class ReplicatedLinear(LinearBase):
    """Not sharded: every rank holds the whole weight."""

    def __init__(self, input_size: int, output_size: int, *, ctx: LayerContext,
                 bias: bool = False):
        super().__init__(input_size, output_size, ctx=ctx, bias=bias)
        self._create(input_size, [output_size], output_size)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
        _check_copy(param.data, loaded_weight, self.what)


class ColumnParallelLinear(LinearBase):
    """Y = X W^T with W's rows (outputs) split over tp ranks; each rank keeps its slice of
    Y (no gather: the next layer is row-parallel)."""

    def __init__(self, input_size: int, output_size: int, *, ctx: LayerContext,
                 bias: bool = False):
        super().__init__(input_size, output_size, ctx=ctx, bias=bias)
        self.output_size_per_partition = divide(output_size, self.tp_size,
                                                f"{self.what}: output size")
        self._create(input_size, self._partition_sizes(), self.output_size_per_partition)

    def _partition_sizes(self) -> list[int]:
        return [self.output_size_per_partition]

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
        n = param.shape[0]
        _check_copy(param.data, _shard(loaded_weight, 0, self.tp_rank, n, self.what), self.what)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections of the same input fused into one GEMM
    (gate_proj + up_proj -> gate_up_proj). shard_id = index into output_sizes. Each
    rank's parameter is [its slice of projection 0 | its slice of projection 1 | ...]."""

    def __init__(self, input_size: int, output_sizes: list[int], *, ctx: LayerContext,
                 bias: bool = False):
        self.output_sizes = list(output_sizes)
        super().__init__(input_size, sum(output_sizes), ctx=ctx, bias=bias)

    def _partition_sizes(self) -> list[int]:
        return [divide(s, self.tp_size, f"{self.what}: output size {i}")
                for i, s in enumerate(self.output_sizes)]

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor,
                      shard_id: Optional[int] = None) -> None:
        if shard_id is None:  # already fused in the checkpoint: [proj 0 | proj 1 | ...]
            for i, part in enumerate(_split_fused(loaded_weight, self.output_sizes, self.what)):
                self.weight_loader(param, part, i)
            return
        if not isinstance(shard_id, int) or not 0 <= shard_id < len(self.output_sizes):
            raise ValueError(f"{self.what}: shard_id {shard_id!r} is not in "
                             f"[0, {len(self.output_sizes)})")
        sizes = self._partition_sizes()
        offset, n = sum(sizes[:shard_id]), sizes[shard_id]
        what = f"{self.what}[{shard_id}]"
        _check_copy(param.data.narrow(0, offset, n),
                    _shard(loaded_weight, 0, self.tp_rank, n, what), what)


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections fused; heads split over tp ranks. With more ranks than kv
    heads, each rank holds one kv head, shared by tp_size // total_num_kv_heads ranks."""

    def __init__(self, hidden_size: int, head_size: int, total_num_heads: int,
                 total_num_kv_heads: Optional[int] = None, *, ctx: LayerContext,
                 bias: bool = False):
        tp_size = ctx.tp_size
        what = ctx.prefix or "QKVParallelLinear"
        self.head_size = head_size
        self.total_num_heads = total_num_heads
        self.total_num_kv_heads = total_num_kv_heads or total_num_heads
        self.num_heads = divide(total_num_heads, tp_size, f"{what}: number of attention heads")
        self.num_kv_heads, self.num_kv_head_replicas = per_rank_kv_heads(
            self.total_num_kv_heads, tp_size)
        out = (self.num_heads + 2 * self.num_kv_heads) * tp_size * head_size
        super().__init__(hidden_size, out, ctx=ctx, bias=bias)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_size

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_size

    def _partition_sizes(self) -> list[int]:
        return [self.q_size, self.kv_size, self.kv_size]

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor,
                      shard_id: Optional[str] = None) -> None:
        if shard_id is None:  # already fused in the checkpoint: [q | k | v], all heads
            d = self.head_size
            sizes = [self.total_num_heads * d, self.total_num_kv_heads * d,
                     self.total_num_kv_heads * d]
            for sid, part in zip("qkv", _split_fused(loaded_weight, sizes, self.what)):
                self.weight_loader(param, part, sid)
            return
        kv_rank = self.tp_rank // self.num_kv_head_replicas
        if shard_id == "q":
            offset, n, rank = 0, self.q_size, self.tp_rank
        elif shard_id == "k":
            offset, n, rank = self.q_size, self.kv_size, kv_rank
        elif shard_id == "v":
            offset, n, rank = self.q_size + self.kv_size, self.kv_size, kv_rank
        else:
            raise ValueError(f"{self.what}: unknown qkv shard_id {shard_id!r}")
        what = f"{self.what}[{shard_id}]"
        _check_copy(param.data.narrow(0, offset, n), _shard(loaded_weight, 0, rank, n, what),
                    what)


class RowParallelLinear(LinearBase):
    """Y = X W^T with W's columns (inputs) split over tp ranks; the partial products are
    summed over the ranks (all-reduce) unless reduce_results=False (the caller reduces)."""

    def __init__(self, input_size: int, output_size: int, *, ctx: LayerContext,
                 bias: bool = False, reduce_results: bool = True):
        super().__init__(input_size, output_size, ctx=ctx, bias=bias)
        self.reduce_results = reduce_results
        self.input_size_per_partition = divide(input_size, self.tp_size,
                                               f"{self.what}: input size")
        self._create(self.input_size_per_partition, [output_size], output_size)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
        if param.dim() == 2:  # the bias is not sharded: every rank loads all of it
            loaded_weight = _shard(loaded_weight, 1, self.tp_rank, param.shape[1], self.what)
        _check_copy(param.data, loaded_weight, self.what)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The bias is added once: by rank 0, before the sum over ranks.
        bias = self.bias if self.tp_rank == 0 else None
        out = self.quant_method.apply(self, x, bias)
        if self.tp_size > 1 and self.reduce_results:
            out = self.ctx.tp.all_reduce(out)
        return out
