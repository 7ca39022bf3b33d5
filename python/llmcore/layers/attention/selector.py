"""Choice of the attention backend class for a device.

cpu: the torch-ops backend. cuda: the llmcore kernels (cuda_backend.py) when they are
compiled in, else the torch-ops backend (works on any device, slower); hip: the torch-ops
backend. Other
backends plug in with `register_attn_backend(device_type, cls)`, which takes precedence.

The backends import only backend.py (the interface); this module imports them, so the
import graph has no circle. The CUDA module is imported lazily: it loads llmcore.ops.
"""

from __future__ import annotations

import importlib

import torch

from llmcore.layers.attention.backend import AttentionBackend
from llmcore.layers.attention.cpu_backend import CpuAttentionBackend

_REGISTERED: dict[str, type] = {}
_KERNEL_MODULE = "llmcore.layers.attention.cuda_backend"


def register_attn_backend(device_type: str, cls: type) -> None:
    if not (isinstance(cls, type) and issubclass(cls, AttentionBackend)):
        raise ValueError(f"attention backend {cls!r} is not an AttentionBackend subclass")
    _REGISTERED[device_type] = cls


def _kernel_backend() -> type | None:
    try:
        module = importlib.import_module(_KERNEL_MODULE)
    except ImportError:
        return None
    return module.CudaAttentionBackend if module.kernels_available() else None


def get_attn_backend(device=None) -> type:
    """The backend class for a device ("cpu", "cuda", torch.device, or None = cpu)."""
    device_type = torch.device(device).type if device is not None else "cpu"
    if device_type in _REGISTERED:
        return _REGISTERED[device_type]
    if device_type == "cpu":
        return CpuAttentionBackend
    if device_type == "cuda":
        return _kernel_backend() or CpuAttentionBackend
    if device_type == "hip":
        return CpuAttentionBackend
    raise ValueError(f"no attention backend for device type {device_type!r}")
