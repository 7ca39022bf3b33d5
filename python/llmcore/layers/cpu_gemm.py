"""fp32 (and bf16) GEMM on the CPU through oneDNN with weights packed once at load time.

torch's F.linear on the CPU goes to MKL's sgemm, which re-packs the weight on every call
and, on AMD EPYC (AVX-512), takes a slow path: measured on the model's shapes at batch 64,
53-156 GFLOP/s vs 128-202 for oneDNN with a pre-packed weight (the LM head 576 -> 49152:
53 vs 195). The packed weight is an opaque oneDNN tensor; it replaces the dense one so the
weights are not held twice.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def _bf16_supported() -> bool:
    # oneDNN's bf16 GEMM needs AVX-512 (native with AVX512-BF16/AMX): 378-420 GFLOP/s
    # packed vs 40-362 for F.linear in bf16 on an EPYC with AVX512-BF16. On AVX2-only CPUs
    # bf16 stays on F.linear.
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check is not None and check())


def can_pack(weight: torch.Tensor) -> bool:
    """True when `weight` [out, in] can be packed for oneDNN: fp32 (or bf16 where the CPU
    has oneDNN's bf16 GEMM) on the CPU with torch's oneDNN ops present (they are internal
    to torch, so absent ops mean: use F.linear)."""
    if weight.device.type != "cpu" or weight.dim() != 2 or weight.is_mkldnn:
        return False
    if not (torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    return weight.dtype == torch.float32 or (weight.dtype == torch.bfloat16
                                             and _bf16_supported())


def pack(weight: torch.Tensor) -> torch.Tensor:
    """[out, in] dense -> oneDNN-packed weight for any batch size (shape kept)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)


def pack_in_place(module: torch.nn.Module) -> Optional[torch.Tensor]:
    """Replace `module.weight` by its packed form, a non-persistent buffer of the same name
    and shape (the dense weight is not kept). Returns it, or None when it cannot be packed."""
    if not can_pack(module.weight):
        return None
    packed = pack(module.weight)
    del module.weight
    module.register_buffer("weight", packed, persistent=False)
    return packed


def linear(x: torch.Tensor, weight: torch.Tensor,
           bias: Optional[torch.Tensor]) -> torch.Tensor:
    """F.linear for a dense or a packed weight: x [..., in] @ weight^T (+ bias)."""
    if not weight.is_mkldnn:
        return F.linear(x, weight, bias)
    if not x.is_contiguous():
        x = x.contiguous()
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
