"""Torch-native reference implementations of every llmcore kernel.

Used by tests/kernels (ground truth for the CUDA kernels) and usable as a CPU / fallback path.
Signatures mirror :mod:`llmcore.ops`. Layouts:

* K/V cache: ``[num_blocks, block_size, num_kv_heads, head_dim]`` (fp8 caches hold value/scale)
* ``slot_mapping`` int64 ``[num_tokens]``: slot = block_id * block_size + offset, negative = skip
* ``block_tables`` int32 ``[num_seqs, max_blocks]``, ``seq_lens`` int32 ``[num_seqs]`` (tokens in
  the cache after this step's write), ``query_start_loc`` int32 ``[num_seqs + 1]``
* q / output ``[num_tokens, num_heads, head_dim]``
* sliding window w > 0: key j is visible to query i iff ``j <= i`` and ``i - j < w``.
"""

from __future__ import annotations

from typing import Optional

import torch

FP8_DTYPES = tuple(
    d for d in (getattr(torch, "float8_e4m3fn", None), getattr(torch, "float8_e5m2", None)) if d is not None
)


def _fp8_max(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).max)


def _scale_value(scale, default: float = 1.0) -> float:
    if scale is None:
        return default
    if isinstance(scale, torch.Tensor):
        return float(scale.reshape(-1)[0].item())
    return float(scale)


# --------------------------------------------------------------------------- KV cache
def reshape_and_cache(key, value, key_cache, value_cache, slot_mapping, k_scale=None, v_scale=None):
    """Write key/value ``[T, num_kv_heads, head_dim]`` into the paged caches in place."""
    block_size = key_cache.shape[1]
    slots = slot_mapping.to(torch.int64)
    keep = slots >= 0
    slots = slots[keep]
    blk, off = slots // block_size, slots % block_size
    for src, cache, scale in ((key[keep], key_cache, k_scale), (value[keep], value_cache, v_scale)):
        if cache.dtype in FP8_DTYPES:
            m = _fp8_max(cache.dtype)
            vals = (src.float() / _scale_value(scale)).clamp(-m, m).to(cache.dtype)
        else:
            vals = src.to(cache.dtype)
        cache[blk, off] = vals


def gather_kv(cache, block_table_row, length: int, scale=None) -> torch.Tensor:
    """Dense float32 ``[length, num_kv_heads, head_dim]`` from one sequence's pages."""
    block_size = cache.shape[1]
    pos = torch.arange(length, device=cache.device)
    blocks = block_table_row.to(torch.int64)[pos // block_size]
    vals = cache[blocks, pos % block_size].float()
    if cache.dtype in FP8_DTYPES:
        vals = vals * _scale_value(scale)
    return vals


def dense_attention(q, k, v, scale: float, q_positions, sliding_window: int = -1):
    """q ``[Tq, H, D]``, k/v ``[Tk, Hkv, D]`` (float); causal by absolute positions (keys are
    positions 0..Tk-1). Returns float32 ``[Tq, H, D]``."""
    h, hkv = q.shape[1], k.shape[1]
    g = h // hkv
    k = k.float().repeat_interleave(g, dim=1)
    v = v.float().repeat_interleave(g, dim=1)
    s = torch.einsum("qhd,khd->hqk", q.float(), k) * scale
    qp = q_positions.to(torch.int64).view(-1, 1)
    kp = torch.arange(k.shape[0], device=q.device).view(1, -1)
    mask = kp <= qp
    if sliding_window is not None and sliding_window > 0:
        mask = mask & (qp - kp < sliding_window)
    s = s.masked_fill(~mask.unsqueeze(0), float("-inf"))
    p = torch.softmax(s, dim=-1)
    p = torch.nan_to_num(p, nan=0.0)
    return torch.einsum("hqk,khd->qhd", p, v)


def paged_attention_decode(q, key_cache, value_cache, block_tables, seq_lens, scale, *,
                           sliding_window: int = -1, k_scale=None, v_scale=None, out=None, **_):
    """Decode: q ``[num_seqs, H, D]``, one query (the last position) per sequence."""
    res = torch.empty_like(q) if out is None else out
    for s in range(q.shape[0]):
        L = int(seq_lens[s])
        if L <= 0:
            res[s] = 0
            continue
        k = gather_kv(key_cache, block_tables[s], L, k_scale)
        v = gather_kv(value_cache, block_tables[s], L, v_scale)
        o = dense_attention(q[s : s + 1], k, v, scale, torch.tensor([L - 1], device=q.device), sliding_window)
        res[s] = o[0].to(res.dtype)
    return res


def prefill_attention(q, key_cache, value_cache, block_tables, seq_lens, query_start_loc, scale, *,
                      sliding_window: int = -1, k_scale=None, v_scale=None, out=None, **_):
    """Varlen causal prefill with cached prefixes; all K/V read from the paged cache."""
    res = torch.empty_like(q) if out is None else out
    qsl = query_start_loc.tolist()
    for s in range(len(qsl) - 1):
        a, b = qsl[s], qsl[s + 1]
        if b <= a:
            continue
        L = int(seq_lens[s])
        k = gather_kv(key_cache, block_tables[s], L, k_scale)
        v = gather_kv(value_cache, block_tables[s], L, v_scale)
        pos = torch.arange(L - (b - a), L, device=q.device)
        res[a:b] = dense_attention(q[a:b], k, v, scale, pos, sliding_window).to(res.dtype)
    return res


# --------------------------------------------------------------------------- norms / activations
def rms_norm(x, weight, eps: float = 1e-6, out=None):
    xf = x.float()
    r = torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    y = (xf * r).to(x.dtype) * weight
    if out is not None:
        out.copy_(y)
        return out
    return y


def fused_add_rms_norm(x, residual, weight, eps: float = 1e-6):
    """In place: residual <- x + residual; x <- rms_norm(residual) * weight. Returns (x, residual)."""
    residual.copy_(x + residual)
    x.copy_(rms_norm(residual, weight, eps))
    return x, residual


def silu_and_mul(x, out=None):
    d = x.shape[-1] // 2
    y = torch.nn.functional.silu(x[..., :d]) * x[..., d:]
    if out is not None:
        out.copy_(y)
        return out
    return y


# --------------------------------------------------------------------------- rotary
def rotary_embedding(positions, query, key, cos_sin_cache, is_neox: bool = True, head_size: Optional[int] = None):
    """In place on query/key ``[T, H, D]`` (or ``[T, H*D]`` with head_size). cos_sin_cache float32
    ``[max_pos, rot_dim]`` = [cos | sin]."""
    rot = cos_sin_cache.shape[-1]
    half = rot // 2
    cs = cos_sin_cache[positions.to(torch.int64)].float()
    cos, sin = cs[:, :half].unsqueeze(1), cs[:, half:].unsqueeze(1)
    for t in (query, key):
        if t is None:
            continue
        v = t.view(t.shape[0], -1, head_size) if (t.dim() == 2 and head_size) else t
        r = v[..., :rot].float()
        if is_neox:
            x1, x2 = r[..., :half], r[..., half:]
            o = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        else:
            x1, x2 = r[..., 0::2], r[..., 1::2]
            o = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)
        v[..., :rot] = o.to(t.dtype)
    return query, key


# --------------------------------------------------------------------------- sampling
_M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def seeded_uniform(seed: int, offset: int, batch: int) -> torch.Tensor:
    """The per-row uniforms the sampling kernel derives from (seed, offset)."""
    seed &= _M64
    offset &= _M64
    base = _splitmix64(seed ^ _splitmix64(offset))
    vals = [(_splitmix64((base + b) & _M64) >> 40) / 16777216.0 for b in range(batch)]
    return torch.tensor(vals, dtype=torch.float32)


def argmax(logits):
    return torch.argmax(logits.float(), dim=-1)


def _row_param(p, b, default):
    if p is None:
        return default
    if isinstance(p, torch.Tensor):
        return p.reshape(-1)[b].item() if p.numel() > 1 else p.reshape(-1)[0].item()
    return p


def sampling_kept_probs(logits, temperature=None, top_k=None, top_p=None, min_p=None):
    """Float32 ``[B, V]`` unnormalised kept probabilities (0 where filtered), following the kernel's
    rules: p = exp((l - max) / T); top-k (ties kept), top-p over the top-k set (smallest value
    threshold whose mass reaches top_p), min-p relative to the max. Rows with T <= 0 are one-hot
    at the argmax."""
    B, V = logits.shape
    res = torch.zeros(B, V, dtype=torch.float32, device=logits.device)
    for b in range(B):
        x = logits[b].float()
        t = float(_row_param(temperature, b, 1.0))
        if not t > 0:
            res[b, int(torch.argmax(x))] = 1.0
            continue
        p = torch.exp((x - x.max()) / t)
        thr = 0.0
        k = int(_row_param(top_k, b, 0))
        if 0 < k < V:
            thr = torch.topk(p, k).values[-1].item()
        tp = float(_row_param(top_p, b, 1.0))
        t_p = 0.0
        if tp < 1.0:
            kept = p[p >= thr]
            sv = torch.sort(kept, descending=True).values
            cs = torch.cumsum(sv.double(), 0)
            target = tp * cs[-1].item()
            j = int(torch.searchsorted(cs, torch.tensor([target], dtype=torch.float64, device=cs.device)).item())
            j = min(j, sv.numel() - 1)
            t_p = sv[j].item()
        mp = max(float(_row_param(min_p, b, 0.0)), 0.0)
        thr = max(thr, t_p, mp)
        res[b] = torch.where((p >= thr) & (p > 0), p, torch.zeros_like(p))
    return res


def sample(logits, temperature=None, top_k=None, top_p=None, min_p=None, *, uniform=None, seed=None, offset=0):
    """Inverse-CDF draw over the kept set in vocabulary order with one uniform per row."""
    B = logits.shape[0]
    if uniform is None:
        uniform = seeded_uniform(seed or 0, offset, B) if seed is not None else torch.rand(B)
    kept = sampling_kept_probs(logits, temperature, top_k, top_p, min_p).double()
    cdf = torch.cumsum(kept, dim=-1)
    target = uniform.to(cdf.device).double().view(-1, 1) * cdf[:, -1:]
    idx = torch.searchsorted(cdf, target, right=True).view(-1)
    return idx.clamp(max=logits.shape[1] - 1).to(torch.int64)


# --------------------------------------------------------------------------- guided decoding
def unpack_token_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """int32 [n, ceil(V/32)] -> bool [n, V]: bit i of word j allows token 32 * j + i.

    Read as little-endian bytes, token t is bit t % 8 of byte t // 8: one byte-wide AND per
    token (a quarter of the traffic of unpacking int32 words)."""
    n = bitmask.shape[0]
    as_bytes = bitmask.contiguous().view(torch.uint8).view(n, -1)
    bit_values = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8, device=bitmask.device)
    bits = torch.bitwise_and(as_bytes.unsqueeze(-1), bit_values)
    return bits.view(n, -1)[:, :vocab_size].ne(0)


def apply_token_bitmask(logits, bitmask, rows=None):
    """In place: logits[rows[i], t] = -inf where bit t of bitmask[i] is 0; tokens past the
    bitmask's width (a padded vocabulary) are disallowed too. rows None: rows 0..n-1."""
    n, V = bitmask.shape[0], logits.shape[1]
    if n == 0:
        return
    allowed = unpack_token_bitmask(bitmask, V)
    if allowed.shape[1] < V:
        allowed = torch.nn.functional.pad(allowed, (0, V - allowed.shape[1]), value=False)
    if rows is None:
        logits[:n].masked_fill_(~allowed, float("-inf"))
        return
    sub = logits.index_select(0, rows)
    logits.index_copy_(0, rows, sub.masked_fill_(~allowed, float("-inf")))


# --------------------------------------------------------------------------- all-reduce
def all_reduce_sum(inputs):
    """The custom all-reduce's result for the ranks' tensors ``inputs`` (rank order): summed in
    float32 in rank order, rounded once to their dtype (what every rank gets)."""
    if not inputs:
        raise ValueError("all_reduce_sum needs at least one tensor")
    acc = inputs[0].float()
    for x in inputs[1:]:
        acc = acc + x.float()
    return acc.to(inputs[0].dtype)
