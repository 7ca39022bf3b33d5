"""LayerContext: the explicit, typed facts every layer and model is built with.

A layer learns from its context which tensor-parallel shard it owns (tp_rank of
tp_size), how to talk to the other ranks (the tensor-parallel group), the dtype and
device of its parameters, its dotted module path (prefix, e.g.
"model.layers.3.self_attn.qkv_proj") and the quantization config to ask for its
quantization method. Models pass `ctx.child("name")` down to each submodule, so the
prefix always equals the module's name in `model.named_modules()`.

No globals: a context is a frozen value, built once by the model loader.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Protocol, runtime_checkable

import torch


@runtime_checkable
class ParallelGroup(Protocol):
    """The collectives a tensor-parallel layer needs from its group of ranks."""

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over the ranks (may work in place and return `tensor`)."""
        ...

    def all_gather(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        """The ranks' tensors concatenated along `dim`, in rank order."""
        ...


class SingleRankGroup:
    """The group of one rank: every collective is the identity."""

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def all_gather(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        return tensor


@runtime_checkable
class QuantMethod(Protocol):
    """How a layer stores its weights and computes with them (see
    llmcore.layers.linear.LinearMethodBase for the linear-layer form)."""

    def create_weights(self, layer: torch.nn.Module, *args: Any, **kwargs: Any) -> None: ...

    def apply(self, layer: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor: ...

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None: ...


@runtime_checkable
class QuantizationConfig(Protocol):
    """A checkpoint's quantization scheme: picks the method of each layer by its prefix
    (None = that layer stays unquantized)."""

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> Optional[QuantMethod]: ...


def _check_rank(what: str, rank: int, size: int) -> None:
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"{what}_size must be a positive int, got {size!r}")
    if not isinstance(rank, int) or not 0 <= rank < size:
        raise ValueError(f"{what}_rank must be in [0, {size}), got {rank!r}")


@dataclass(frozen=True)
class LayerContext:
    device: torch.device
    dtype: torch.dtype
    tp_rank: int = 0
    tp_size: int = 1
    pp_rank: int = 0
    pp_size: int = 1
    # The tensor-parallel communicator; None = not set up (fine for tp_size == 1, where
    # the collectives are the identity; with tp_size > 1 shapes and weight loading work
    # but a forward that needs communication raises).
    tp_group: Optional[ParallelGroup] = None
    quant_config: Optional[QuantizationConfig] = None
    prefix: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", torch.device(self.device))
        if not isinstance(self.dtype, torch.dtype):
            raise ValueError(f"LayerContext.dtype must be a torch.dtype, got {self.dtype!r}")
        _check_rank("tp", self.tp_rank, self.tp_size)
        _check_rank("pp", self.pp_rank, self.pp_size)
        if self.tp_group is not None and not isinstance(self.tp_group, ParallelGroup):
            raise ValueError(f"tp_group {self.tp_group!r} has no all_reduce/all_gather")
        if self.quant_config is not None and not isinstance(self.quant_config,
                                                            QuantizationConfig):
            raise ValueError(f"quant_config {self.quant_config!r} has no get_quant_method")
        if self.prefix and any(not part for part in self.prefix.split(".")):
            raise ValueError(f"prefix {self.prefix!r} has an empty path component")

    @classmethod
    def single_rank(cls, device, dtype: torch.dtype) -> "LayerContext":
        return cls(device=device, dtype=dtype, tp_group=SingleRankGroup())

    def child(self, name: str) -> "LayerContext":
        """This context for the submodule `name` (which may itself be dotted, "layers.3")."""
        if not isinstance(name, str) or not name or any(not p for p in name.split(".")):
            raise ValueError(f"child module name must be a non-empty dotted name, got {name!r}")
        return dataclasses.replace(self, prefix=f"{self.prefix}.{name}" if self.prefix else name)

    @property
    def tp(self) -> ParallelGroup:
        """The tensor-parallel group to communicate through."""
        if self.tp_group is not None:
            return self.tp_group
        if self.tp_size == 1:
            return _SINGLE_RANK
        raise RuntimeError(f"{self.prefix or 'layer'}: tp_size={self.tp_size} but the context "
                           "has no tp_group to communicate through")

    def get_quant_method(self, layer: torch.nn.Module) -> Optional[QuantMethod]:
        """The quantization method for `layer` at this prefix (None = unquantized)."""
        if self.quant_config is None:
            return None
        return self.quant_config.get_quant_method(layer, self.prefix)


_SINGLE_RANK = SingleRankGroup()  # stateless: sharing one instance is harmless


# ---------------------------------------------------------------------- shard sizes
def divide(total: int, tp_size: int, what: str) -> int:
    """total // tp_size, or a ValueError naming both numbers when it does not divide."""
    if total % tp_size != 0:
        raise ValueError(f"{what} ({total}) is not divisible by the tensor-parallel size "
                         f"({tp_size})")
    return total // tp_size


def per_rank_kv_heads(total_num_kv_heads: int, tp_size: int) -> tuple[int, int]:
    """-> (kv heads per rank, replicas of each kv head). With more ranks than kv heads
    each rank holds one kv head, replicated on tp_size // total_num_kv_heads ranks."""
    if tp_size <= total_num_kv_heads:
        return divide(total_num_kv_heads, tp_size, "number of key/value heads"), 1
    if tp_size % total_num_kv_heads != 0:
        raise ValueError(f"the tensor-parallel size ({tp_size}) is larger than the number of "
                         f"key/value heads ({total_num_kv_heads}) but not a multiple of it")
    return 1, tp_size // total_num_kv_heads
