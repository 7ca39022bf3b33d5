"""fp32 GEMM on the CPU through oneDNN with weights packed once at load time.

torch's F.linear on the CPU goes to MKL's sgemm, which re-packs the weight on every call
and, on AMD EPYC (AVX-512), takes a slow path: measured on the model's shapes at batch 64,
53-156 GFLOP/s vs 128-202 for oneDNN with a pre-packed weight (the LM head 576 -> 49152:
53 vs 195). The packed weight is an opaque oneDNN tensor; it replaces the dense one so the
weights are not held twice.
"""

from __future__ import annotations

from typing import Optional

import torch


def can_pack(weight: torch.Tensor) -> bool:
    """True when `weight` [out, in] can be packed for oneDNN: fp32 on the CPU with torch's
    oneDNN ops present (they are internal to torch, so absent ops mean: use F.linear)."""
    return (weight.device.type == "cpu" and weight.dtype == torch.float32
            and weight.dim() == 2 and not weight.is_mkldnn
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def pack(weight: torch.Tensor) -> torch.Tensor:
    """[out, in] dense -> oneDNN-packed weight for any batch size (shape kept)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)


def packed_linear(x: torch.Tensor, packed: torch.Tensor,
                  bias: Optional[torch.Tensor]) -> torch.Tensor:
    """x [..., in] @ packed^T (+ bias) -> [..., out], like F.linear."""
    if not x.is_contiguous():
        x = x.contiguous()
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
