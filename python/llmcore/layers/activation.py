"""Activations."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmcore.layers.utils import use_cuda_kernels


class SiluAndMul(nn.Module):
    """x: [..., 2*d] laid out as [gate | up] -> silu(gate) * up, [..., d]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_cuda_kernels(x):
            from llmcore import ops
            return ops.silu_and_mul(x)
        d = x.shape[-1] // 2
        out = F.silu(x[..., :d])
        return out.mul_(x[..., d:])
