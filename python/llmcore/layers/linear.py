"""Linear layers shaped for tensor parallelism (tp_size=1 today) with a quant_method hook.

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

Quantization hooks in through `quant_method` (a LinearMethodBase): it creates the
parameters and computes the product. `process_weights_after_loading` runs once all
weights are in (the model loader calls it), e.g. to repack for a kernel.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from llmcore.layers import cpu_gemm
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
    def __init__(self, input_size: int, output_size: int, *, bias: bool = False,
                 params_dtype: Optional[torch.dtype] = None, device=None,
                 quant_method: Optional[LinearMethodBase] = None,
                 tp_size: int = 1, tp_rank: int = 0, prefix: str = ""):
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.params_dtype = params_dtype or torch.get_default_dtype()
        self.device = device
        self.tp_size = tp_size
        self.tp_rank = tp_rank
        self.prefix = prefix
        self.quant_method = quant_method or UnquantizedLinearMethod()

    def _create(self, input_size_per_partition: int, output_partition_sizes: list[int],
                bias: bool, bias_size: int) -> None:
        self.quant_method.create_weights(self, input_size_per_partition, output_partition_sizes,
                                         self.params_dtype, self.device)
        self.weight.weight_loader = self.weight_loader
        if bias:
            self.bias = nn.Parameter(torch.zeros(bias_size, dtype=self.params_dtype,
                                                 device=self.device), requires_grad=False)
            set_weight_attrs(self.bias, {"output_dim": 0, "weight_loader": self.weight_loader})
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_method.apply(self, x, self.bias)

    def extra_repr(self) -> str:
        return (f"in={self.input_size}, out={self.output_size}, bias={self.bias is not None}, "
                f"tp_size={self.tp_size}")


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


class ReplicatedLinear(LinearBase):
    def __init__(self, input_size: int, output_size: int, **kw):
        super().__init__(input_size, output_size, **kw)
        self._create(input_size, [output_size], kw.get("bias", False), output_size)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
        _check_copy(param.data, loaded_weight, self.prefix or "ReplicatedLinear")


class ColumnParallelLinear(LinearBase):
    """Y = X W^T with W's rows (outputs) split over tp ranks."""

    def __init__(self, input_size: int, output_size: int, **kw):
        super().__init__(input_size, output_size, **kw)
        assert output_size % self.tp_size == 0, "output_size must divide by tp_size"
        self.output_size_per_partition = output_size // self.tp_size
        self._create(input_size, self._partition_sizes(), kw.get("bias", False),
                     self.output_size_per_partition)

    def _partition_sizes(self) -> list[int]:
        return [self.output_size_per_partition]

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
        n = param.shape[0]
        what = self.prefix or "ColumnParallelLinear"
        _check_copy(param.data, _shard(loaded_weight, 0, self.tp_rank, n, what), what)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections of the same input fused into one GEMM
    (gate_proj + up_proj -> gate_up_proj). shard_id = index into output_sizes."""

    def __init__(self, input_size: int, output_sizes: list[int], **kw):
        self.output_sizes = list(output_sizes)
        super().__init__(input_size, sum(output_sizes), **kw)

    def _partition_sizes(self) -> list[int]:
        return [s // self.tp_size for s in self.output_sizes]

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor,
                      shard_id: Optional[int] = None) -> None:
        if shard_id is None:  # already fused in the checkpoint
            return super().weight_loader(param, loaded_weight)
        sizes = self._partition_sizes()
        offset, n = sum(sizes[:shard_id]), sizes[shard_id]
        what = f"{self.prefix or 'MergedColumnParallelLinear'}[{shard_id}]"
        _check_copy(param.data.narrow(0, offset, n),
                    _shard(loaded_weight, 0, self.tp_rank, n, what), what)


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections fused; heads split over tp ranks (kv heads replicated when
    tp_size > num_kv_heads)."""

    def __init__(self, hidden_size: int, head_size: int, total_num_heads: int,
                 total_num_kv_heads: Optional[int] = None, **kw):
        tp_size = kw.get("tp_size", 1)
        self.head_size = head_size
        self.total_num_heads = total_num_heads
        self.total_num_kv_heads = total_num_kv_heads or total_num_heads
        assert total_num_heads % tp_size == 0
        self.num_heads = total_num_heads // tp_size
        if tp_size >= self.total_num_kv_heads:
            self.num_kv_heads = 1
            self.num_kv_head_replicas = tp_size // self.total_num_kv_heads
        else:
            assert self.total_num_kv_heads % tp_size == 0
            self.num_kv_heads = self.total_num_kv_heads // tp_size
            self.num_kv_head_replicas = 1
        out = (self.num_heads + 2 * self.num_kv_heads) * tp_size * head_size
        super().__init__(hidden_size, out, **kw)

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
        if shard_id is None:  # already fused in the checkpoint
            return ColumnParallelLinear.weight_loader(self, param, loaded_weight)
        if shard_id == "q":
            offset, n, rank = 0, self.q_size, self.tp_rank
        elif shard_id == "k":
            offset, n, rank = self.q_size, self.kv_size, self.tp_rank // self.num_kv_head_replicas
        elif shard_id == "v":
            offset, n = self.q_size + self.kv_size, self.kv_size
            rank = self.tp_rank // self.num_kv_head_replicas
        else:
            raise ValueError(f"unknown qkv shard_id {shard_id!r}")
        what = f"{self.prefix or 'QKVParallelLinear'}[{shard_id}]"
        _check_copy(param.data.narrow(0, offset, n), _shard(loaded_weight, 0, rank, n, what),
                    what)


class RowParallelLinear(LinearBase):
    """Y = X W^T with W's columns (inputs) split over tp ranks; outputs all-reduced."""

    def __init__(self, input_size: int, output_size: int, **kw):
        super().__init__(input_size, output_size, **kw)
        assert input_size % self.tp_size == 0, "input_size must divide by tp_size"
        self.input_size_per_partition = input_size // self.tp_size
        self._create(self.input_size_per_partition, [output_size], kw.get("bias", False),
                     output_size)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
        if param.dim() == 2:
            n = param.shape[1]
            loaded_weight = _shard(loaded_weight, 1, self.tp_rank, n,
                                   self.prefix or "RowParallelLinear")
        _check_copy(param.data, loaded_weight, self.prefix or "RowParallelLinear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # With tp_size > 1 only rank 0 adds the bias, then all-reduce (not built yet).
        bias = self.bias if self.tp_rank == 0 else None
        return self.quant_method.apply(self, x, bias)
