"""Rotary position embeddings (RoPE) with a cos/sin cache indexed by arbitrary positions.

Scaling variants follow transformers' definitions (modeling_rope_utils):
- default: inv_freq = 1 / theta^(2i/d)
- linear: inv_freq / factor (== positions / factor)
- dynamic (NTK): static form as in vLLM: theta' = theta * (factor*L/max_pos - (factor-1))^(d/(d-2))
  with L = max_pos*factor, the cache covering L positions (equals transformers' dynamic
  rope once the sequence reaches L).
- llama3: per-frequency smooth interpolation between inv_freq and inv_freq / factor.
- yarn: as transformers `_compute_yarn_parameters` (attention factor folded into cos/sin).
- longrope (Phi-3; "su" is its old name): inv_freq = 1 / (ext * theta^(2i/d)) with ext the
  short_factor list below original_max_position_embeddings and the long_factor list from
  there on, cos/sin scaled by attention_factor (default sqrt(1 + ln(s)/ln(orig)), s = factor,
  else max_position/orig). The choice is per position, so a cached key never changes: as
  transformers while a sequence grows past orig (its cached keys keep the short factors);
  a single prompt longer than orig gets short factors for its first orig positions where
  transformers re-rotates all of them with the long ones (vLLM switches the whole batch).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from llmcore.layers.utils import use_cuda_kernels


SUPPORTED_ROPE_TYPES = ("linear", "dynamic", "yarn", "llama3", "longrope", "su")
_REQUIRED_KEYS = {"linear": ("factor",), "dynamic": ("factor",), "yarn": ("factor",),
                  "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                             "original_max_position_embeddings"),
                  "longrope": ("short_factor", "long_factor", "original_max_position_embeddings")}


def _scaling_type(rope_scaling: Optional[dict]) -> str:
    if not rope_scaling:
        return "default"
    t = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
    return "longrope" if t == "su" else t


def check_rope_scaling(rope_scaling: dict, from_flag: bool = True) -> None:
    """ValueError naming the source (--rope-scaling or the model config) when the type is
    unknown or a key it needs is missing or malformed."""
    where = "--rope-scaling" if from_flag else "the model config's rope_scaling"
    kind = _scaling_type(rope_scaling)
    if kind == "default":
        return
    if kind not in _REQUIRED_KEYS:
        raise ValueError(f"{where}: RoPE scaling type {kind!r} is not supported; supported types: "
                         f"{', '.join(SUPPORTED_ROPE_TYPES)}")
    missing = [k for k in _REQUIRED_KEYS[kind] if rope_scaling.get(k) is None]
    if missing:
        raise ValueError(f"{where}: type {kind!r} needs {', '.join(missing)}")
    if kind == "longrope":
        for key in ("short_factor", "long_factor"):
            v = rope_scaling[key]
            if not isinstance(v, (list, tuple)) or not v or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in v):
                raise ValueError(f"{where}: {key} must be a list of positive numbers")
        if len(rope_scaling["short_factor"]) != len(rope_scaling["long_factor"]):
            raise ValueError(f"{where}: short_factor and long_factor must have the same length")
    else:
        f = rope_scaling["factor"]
        if isinstance(f, bool) or not isinstance(f, (int, float)) or f <= 0:
            raise ValueError(f"{where}: factor must be a positive number, got {f!r}")


def longrope_cache(rotary_dim: int, base: float, rope_scaling: dict, max_position: int,
                   cache_len: int) -> torch.Tensor:
    """[cache_len, rotary_dim] cos|sin cache of longrope (see the module docstring)."""
    orig = int(rope_scaling["original_max_position_embeddings"])
    half = rotary_dim // 2
    factors = {}
    for key in ("short_factor", "long_factor"):
        f = torch.tensor([float(x) for x in rope_scaling[key]], dtype=torch.float32)
        if f.numel() != half:
            raise ValueError(f"rope_scaling {key} has {f.numel()} entries; the rotary dimension "
                             f"{rotary_dim} needs {half}")
        factors[key] = f
    attn = rope_scaling.get("attention_factor")
    if attn is None:
        scale = float(rope_scaling.get("factor") or max_position / orig)
        attn = 1.0 if scale <= 1.0 else math.sqrt(1 + math.log(scale) / math.log(orig))
    attn = float(attn)
    mscales = {"short_factor": float(rope_scaling.get("short_mscale") or attn),
               "long_factor": float(rope_scaling.get("long_mscale") or attn)}
    exps = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    parts = []
    for key, (lo, hi) in (("short_factor", (0, min(orig, cache_len))),
                          ("long_factor", (min(orig, cache_len), cache_len))):
        if hi <= lo:
            continue
        inv_freq = 1.0 / (factors[key] * base ** exps)
        freqs = torch.outer(torch.arange(lo, hi, dtype=torch.float32), inv_freq)
        m = mscales[key]
        parts.append(torch.cat([freqs.cos() * m, freqs.sin() * m], dim=-1))
    return torch.cat(parts, dim=0)


def compute_inv_freq(rotary_dim: int, base: float, rope_scaling: Optional[dict],
                     max_position: int) -> tuple[torch.Tensor, float, int]:
    """-> (inv_freq [rotary_dim/2] float32, attention scaling of cos/sin, cache length)."""
    kind = _scaling_type(rope_scaling)
    exps = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    inv_freq = 1.0 / (base ** exps)
    mscale = 1.0
    cache_len = max_position
    if kind == "default":
        pass
    elif kind == "linear":
        factor = float(rope_scaling["factor"])
        inv_freq = inv_freq / factor
        cache_len = int(max_position * factor)
    elif kind == "dynamic":
        factor = float(rope_scaling["factor"])
        orig = int(rope_scaling.get("original_max_position_embeddings") or max_position)
        seq_len = int(orig * factor)
        base = base * ((factor * seq_len / orig) - (factor - 1)) ** (rotary_dim / (rotary_dim - 2))
        inv_freq = 1.0 / (base ** exps)
        cache_len = max(max_position, seq_len)
    elif kind == "llama3":
        factor = float(rope_scaling["factor"])
        low = float(rope_scaling["low_freq_factor"])
        high = float(rope_scaling["high_freq_factor"])
        old = float(rope_scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old / low, old / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv_freq = torch.where(is_medium, smoothed, scaled)
    elif kind == "longrope":
        pass  # per-position factors: see longrope_cache (RotaryEmbedding builds it)
    elif kind == "yarn":
        factor = float(rope_scaling["factor"])
        orig = int(rope_scaling.get("original_max_position_embeddings") or max_position)
        beta_fast = float(rope_scaling.get("beta_fast") or 32)
        beta_slow = float(rope_scaling.get("beta_slow") or 1)
        attn_factor = rope_scaling.get("attention_factor")
        mscale = float(attn_factor) if attn_factor is not None else (
            0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0)

        def corr_dim(num_rot):
            return (rotary_dim * math.log(orig / (num_rot * 2 * math.pi))) / (2 * math.log(base))

        lo = math.floor(corr_dim(beta_fast))
        hi = math.ceil(corr_dim(beta_slow))
        if rope_scaling.get("truncate", True) is False:
            lo, hi = corr_dim(beta_fast), corr_dim(beta_slow)
        lo, hi = max(lo, 0), min(hi, rotary_dim - 1)
        if lo == hi:
            hi += 0.001
        ramp = torch.clamp((torch.arange(rotary_dim // 2, dtype=torch.float32) - lo) / (hi - lo), 0, 1)
        extrap_factor = 1 - ramp
        inv_freq = (inv_freq / factor) * (1 - extrap_factor) + inv_freq * extrap_factor
        cache_len = max(max_position, int(orig * factor))
    else:
        raise ValueError(f"rope_scaling type {kind!r} is not supported; supported types: "
                         f"{', '.join(SUPPORTED_ROPE_TYPES)}")
    return inv_freq, mscale, cache_len


class RotaryEmbedding(nn.Module):
    """cos_sin_cache: [cache_len, rotary_dim] = [cos | sin] halves, float32 (kept in fp32
    for accuracy; cos/sin are cast to the activation dtype after the gather)."""

    def __init__(self, head_size: int, rotary_dim: int, max_position: int, base: float,
                 rope_scaling: Optional[dict] = None, is_neox_style: bool = True,
                 device=None, max_len: Optional[int] = None):
        """max_position: the model's (original) max_position_embeddings; max_len: serve
        positions up to this many (the cache grows to cover it)."""
        super().__init__()
        self.head_size = head_size
        self.rotary_dim = rotary_dim
        self.max_position = max_position
        self.base = base
        self.is_neox_style = is_neox_style
        inv_freq, mscale, cache_len = compute_inv_freq(rotary_dim, base, rope_scaling, max_position)
        cache_len = max(cache_len, max_len or 0)
        if _scaling_type(rope_scaling) == "longrope":
            cache = longrope_cache(rotary_dim, base, rope_scaling, max_position, cache_len)
        else:
            t = torch.arange(cache_len, dtype=torch.float32)
            freqs = torch.outer(t, inv_freq)
            cache = torch.cat([freqs.cos() * mscale, freqs.sin() * mscale], dim=-1)
        self.register_buffer("cos_sin_cache", cache.to(device), persistent=False)

    def get_cos_sin(self, positions: torch.Tensor, dtype: torch.dtype
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> cos, sin each [T, 1, rotary_dim/2] (broadcast over heads).

        On CUDA with the compiled kernels: (positions, None) instead; apply_ then runs the
        fused rotary kernel, which gathers cos/sin itself."""
        if use_cuda_kernels(positions) and self.cos_sin_cache.is_cuda:
            return positions, None
        cs = self.cos_sin_cache.index_select(0, positions)
        if cs.dtype != dtype:
            cs = cs.to(dtype)
        cos, sin = cs.unsqueeze(1).chunk(2, dim=-1)
        return cos, sin

    def apply_(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate x [T, heads*head_size] (may be a strided view, last dim contiguous) in place."""
        if sin is None:  # fused path: cos holds the positions (see get_cos_sin)
            from llmcore import ops
            ops.rotary_embedding(cos, x, None, self.cos_sin_cache, self.is_neox_style,
                                 head_size=self.head_size)
            return x
        T = x.shape[0]
        x = x.view(T, -1, self.head_size)
        rot = x[..., :self.rotary_dim]
        half = self.rotary_dim // 2
        if self.is_neox_style:
            x1, x2 = rot[..., :half], rot[..., half:]
        else:
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
        o1 = x1 * cos - x2 * sin
        o2 = x2 * cos + x1 * sin
        x1.copy_(o1)
        x2.copy_(o2)
        return x

    def forward(self, positions: torch.Tensor, query: torch.Tensor,
                key: Optional[torch.Tensor] = None):
        """query [T, H*D], key [T, KV*D] (or None): rotated in place and returned."""
        cos, sin = self.get_cos_sin(positions, query.dtype)
        self.apply_(query, cos, sin)
        if key is not None:
            self.apply_(key, cos, sin)
        return query, key


def get_rope(head_size: int, rotary_dim: int, max_position: int, base: float,
             rope_scaling: Optional[dict] = None, is_neox_style: bool = True,
             device=None, max_len: Optional[int] = None) -> RotaryEmbedding:
    return RotaryEmbedding(head_size, rotary_dim, max_position, base, rope_scaling,
                           is_neox_style, device, max_len)
