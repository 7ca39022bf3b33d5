"""RMSNorm, with a fused residual-add variant."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from llmcore.layers.context import LayerContext
from llmcore.layers.utils import default_weight_loader, use_cuda_kernels


class RMSNorm(nn.Module):
    """Replicated on every tensor-parallel rank (normalizes the full hidden state)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, *, ctx: LayerContext):
        super().__init__()
        self.hidden_size = hidden_size
        self.variance_epsilon = eps
        self.prefix = ctx.prefix
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=ctx.dtype, device=ctx.device),
                                   requires_grad=False)
        self.weight.weight_loader = default_weight_loader

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        orig_dtype = x.dtype
        xf = x.float() if orig_dtype != torch.float32 else x
        var = xf.pow(2).mean(-1, keepdim=True)
        out = xf * torch.rsqrt(var.add_(self.variance_epsilon))
        if orig_dtype != torch.float32:
            out = out.to(orig_dtype)
        return out.mul_(self.weight)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None
                ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Without residual: norm(x). With residual: (norm(x + residual), x + residual).

        The fused form may reuse x's storage for the new residual: callers must not use x
        afterwards (it is a fresh layer output in the model)."""
        if use_cuda_kernels(x):
            from llmcore import ops
            if residual is None:
                return ops.rms_norm(x, self.weight, self.variance_epsilon)
            # in place: residual <- x + residual, x <- norm(residual)
            return ops.fused_add_rms_norm(x, residual, self.weight, self.variance_epsilon)
        if residual is None:
            return self._norm(x)
        x = x.add_(residual)
        return self._norm(x), x
