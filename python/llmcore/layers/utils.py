"""Small helpers shared by layers."""

from __future__ import annotations

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
