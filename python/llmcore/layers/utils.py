"""Small helpers shared by layers."""

from __future__ import annotations

from typing import Optional

import torch


def default_weight_loader(param: torch.Tensor, loaded_weight: torch.Tensor) -> None:
    """Copy a checkpoint tensor into a parameter of the same shape (casting dtype/device)."""
    if param.shape != loaded_weight.shape:
        raise ValueError(f"weight shape {tuple(loaded_weight.shape)} does not match parameter "
                         f"shape {tuple(param.shape)}")
    param.data.copy_(loaded_weight)


def set_weight_attrs(param: torch.Tensor, attrs: dict) -> None:
    for k, v in attrs.items():
        setattr(param, k, v)


_CUDA_KERNELS: Optional[bool] = None


def use_cuda_kernels(t: torch.Tensor) -> bool:
    """True when t is on a CUDA device and the compiled llmcore kernels are available
    (layers then use the fused kernels; CPU tensors always take the torch path)."""
    global _CUDA_KERNELS
    if t.device.type != "cuda":
        return False
    if _CUDA_KERNELS is None:
        from llmcore import ops
        _CUDA_KERNELS = ops.cuda_available()
    return _CUDA_KERNELS
