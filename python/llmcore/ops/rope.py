"""cos/sin cache for the rotary kernel (float32 ``[max_position, rotary_dim]`` = [cos | sin]).

Scaling follows the HF ``rope_scaling`` dicts: ``linear``, ``dynamic`` (NTK-aware, cache
computed for ``max_position * factor``), ``llama3``. The kernel itself is scaling-agnostic.
"""

from __future__ import annotations

import math
from typing import Optional

import torch


def _inv_freq(rotary_dim: int, base: float) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim))


def compute_cos_sin_cache(rotary_dim: int, max_position: int, base: float = 10000.0,
                          scaling: Optional[dict] = None, device=None) -> torch.Tensor:
    scaling = dict(scaling or {})
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    inv_freq = _inv_freq(rotary_dim, base)
    positions = torch.arange(max_position, dtype=torch.float64)
    if kind in ("default", None):
        pass
    elif kind == "linear":
        positions = positions / float(scaling["factor"])
    elif kind == "dynamic":
        factor = float(scaling["factor"])
        orig = int(scaling.get("original_max_position_embeddings", max_position))
        max_len = int(orig * factor)
        new_base = base * ((factor * max_len / orig) - (factor - 1)) ** (rotary_dim / (rotary_dim - 2))
        inv_freq = _inv_freq(rotary_dim, new_base)
        positions = torch.arange(max(max_len, max_position), dtype=torch.float64)
    elif kind == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        orig = float(scaling.get("original_max_position_embeddings", 8192))
        low_wl, high_wl = orig / low, orig / high
        wavelen = 2 * math.pi / inv_freq
        smooth = (orig / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > low_wl, inv_freq / factor, inv_freq)
        mid = (wavelen <= low_wl) & (wavelen >= high_wl)
        inv_freq = torch.where(mid, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)
    else:
        raise ValueError(f"unsupported rope scaling type {kind!r}")
    freqs = torch.outer(positions, inv_freq)
    cache = torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(torch.float32)
    return cache if device is None else cache.to(device)
