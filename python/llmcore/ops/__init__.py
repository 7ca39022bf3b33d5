"""Torch-facing wrappers of the llmcore GPU kernels.

The only bridge between tensors and the raw-pointer launchers in ``llmcore._cuda`` (or
``llmcore._hip``). Each function checks dtype / shape / contiguity / device and raises
``ValueError`` / ``TypeError`` with a clear message. Importing this package never needs the
compiled module: see :func:`cuda_available`; :mod:`llmcore.ops.reference` holds the torch-native
implementations with the same signatures (for tests and as a fallback).
"""

from __future__ import annotations

import importlib
import math
from typing import Optional, Tuple

import torch

from . import reference  # noqa: F401  (torch-only, always importable)
from .rope import compute_cos_sin_cache  # noqa: F401

__all__ = [
    "cuda_available", "reshape_and_cache", "paged_attention_decode", "prefill_attention",
    "rms_norm", "fused_add_rms_norm", "rotary_embedding", "silu_and_mul", "argmax", "sample",
    "compute_cos_sin_cache", "reference", "apply_token_bitmask", "host_device_pointer",
    "wait_host_flag", "stream_wait_value_geq",
]

_MOD = None
_MOD_ERR: Optional[str] = None


def _load():
    global _MOD, _MOD_ERR
    if _MOD is None and _MOD_ERR is None:
        errs = []
        for name in ("llmcore._cuda", "llmcore._hip"):
            try:
                _MOD = importlib.import_module(name)
                break
            except ImportError as e:  # pragma: no cover - depends on the build
                errs.append(f"{name}: {e}")
        if _MOD is None:
            _MOD_ERR = "; ".join(errs)
    return _MOD


def cuda_available() -> bool:
    """True when the compiled kernel module imports and torch sees a GPU."""
    return _load() is not None and torch.cuda.is_available()


def _C():
    mod = _load()
    if mod is None:
        raise RuntimeError(f"llmcore GPU kernels are not available ({_MOD_ERR}); "
                           "build with LLMCORE_CUDA=ON or use llmcore.ops.reference")
    return mod


_DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
if hasattr(torch, "float8_e4m3fn"):
    _DTYPE_CODE[torch.float8_e4m3fn] = 3
if hasattr(torch, "float8_e5m2"):
    _DTYPE_CODE[torch.float8_e5m2] = 4
_ACT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _act_code(t: torch.Tensor, name: str) -> int:
    if t.dtype not in _ACT_DTYPES:
        raise TypeError(f"{name}: dtype must be float32/float16/bfloat16, got {t.dtype}")
    return _DTYPE_CODE[t.dtype]


def _cuda_tensor(t, name: str, device=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cuda":
        raise ValueError(f"{name}: must be on a CUDA device, got {t.device}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: on {t.device}, expected {device}")


def _contig(t, name):
    if not t.is_contiguous():
        raise ValueError(f"{name}: must be contiguous")


def _rows(t, name, ndim):
    """Tensor whose last ndim-1 dims are packed (row stride free); returns the row stride."""
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dims, got shape {tuple(t.shape)}")
    expect = 1
    for d in range(ndim - 1, 0, -1):
        if t.shape[d] > 1 and t.stride(d) != expect:
            raise ValueError(f"{name}: inner dims must be contiguous (strides {t.stride()})")
        expect *= t.shape[d]
    return t.stride(0)


def _index(t, name, dtype, ndim, device):
    _cuda_tensor(t, name, device)
    if t.dtype != dtype:
        raise TypeError(f"{name}: dtype must be {dtype}, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dims, got shape {tuple(t.shape)}")
    _contig(t, name)


def _stream(t) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


def _scale_ptr(scale, device, name):
    if scale is None:
        scale = 1.0
    if not isinstance(scale, torch.Tensor):
        scale = torch.tensor([float(scale)], dtype=torch.float32, device=device)
    _cuda_tensor(scale, name, device)
    if scale.dtype != torch.float32 or scale.numel() != 1:
        raise TypeError(f"{name}: expected a float32 tensor with one element")
    return scale


def _check_caches(key_cache, value_cache, device):
    for c, n in ((key_cache, "key_cache"), (value_cache, "value_cache")):
        _cuda_tensor(c, n, device)
        if c.dim() != 4:
            raise ValueError(f"{n}: expected [num_blocks, block_size, num_kv_heads, head_dim], got {tuple(c.shape)}")
        _contig(c, n)
        if c.dtype not in _DTYPE_CODE:
            raise TypeError(f"{n}: unsupported dtype {c.dtype}")
    if key_cache.shape != value_cache.shape or key_cache.dtype != value_cache.dtype:
        raise ValueError("key_cache and value_cache must have the same shape and dtype")


def _is_fp8(dtype):
    return _DTYPE_CODE.get(dtype, 0) >= 3


# --------------------------------------------------------------------------- KV cache
def reshape_and_cache(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                      value_cache: torch.Tensor, slot_mapping: torch.Tensor,
                      k_scale=None, v_scale=None) -> None:
    """Write key/value ``[num_tokens, num_kv_heads, head_dim]`` (row-strided views allowed) into
    the paged caches at ``slot_mapping`` (int64, negative = skip). fp8 caches
    (float8_e4m3fn / float8_e5m2) store value / scale; scales are float32 1-element tensors or
    floats (default 1.0)."""
    dev = key.device
    _cuda_tensor(key, "key"); _cuda_tensor(value, "value", dev)
    _check_caches(key_cache, value_cache, dev)
    _index(slot_mapping, "slot_mapping", torch.int64, 1, dev)
    code = _act_code(key, "key")
    if value.dtype != key.dtype:
        raise TypeError("key and value must have the same dtype")
    ks, vs = _rows(key, "key", 3), _rows(value, "value", 3)
    T, H, D = key.shape
    if value.shape != key.shape:
        raise ValueError(f"value shape {tuple(value.shape)} != key shape {tuple(key.shape)}")
    if key_cache.shape[2] != H or key_cache.shape[3] != D:
        raise ValueError(f"cache heads/head_dim {tuple(key_cache.shape[2:])} != key {(H, D)}")
    if slot_mapping.shape[0] != T:
        raise ValueError(f"slot_mapping has {slot_mapping.shape[0]} entries for {T} tokens")
    ccode = _DTYPE_CODE[key_cache.dtype]
    ksp = vsp = 0
    if _is_fp8(key_cache.dtype):
        kst, vst = _scale_ptr(k_scale, dev, "k_scale"), _scale_ptr(v_scale, dev, "v_scale")
        ksp, vsp = kst.data_ptr(), vst.data_ptr()
    elif key_cache.dtype != key.dtype:
        raise TypeError(f"cache dtype {key_cache.dtype} must equal key dtype {key.dtype} or be fp8")
    _C().reshape_and_cache(key.data_ptr(), value.data_ptr(), key_cache.data_ptr(), value_cache.data_ptr(),
                           slot_mapping.data_ptr(), T, H, D, key_cache.shape[1], ks, vs, code, ccode,
                           ksp, vsp, _stream(key))


# --------------------------------------------------------------------------- attention
_SM_COUNT = {}


def _sm_count(device) -> int:
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def decode_split_plan(num_seqs: int, num_heads: int, num_kv_heads: int, max_seq_len: int,
                      sliding_window: int, sm_count: int, num_splits: Optional[int] = None,
                      min_partition: int = 256) -> Tuple[int, int]:
    """(num_splits, partition_size) for flash-decoding: split only when the grid would not fill
    the GPU, never into partitions shorter than ``min_partition`` tokens."""
    eff = max_seq_len if sliding_window is None or sliding_window <= 0 else min(max_seq_len, sliding_window)
    eff = max(eff, 1)
    if num_splits is None:
        g = num_heads // num_kv_heads
        gc = 1 if g == 1 else 2 if g <= 2 else 4 if g <= 4 else 8  # heads per CTA (kernel's GC)
        base = num_seqs * num_kv_heads * math.ceil(g / gc)
        want = math.ceil(2 * sm_count / max(base, 1))
        num_splits = max(1, min(math.ceil(eff / min_partition), want))
    num_splits = max(1, min(int(num_splits), eff))
    return num_splits, math.ceil(eff / num_splits)


def _check_attn(q, key_cache, value_cache, block_tables, seq_lens, out, name):
    dev = q.device
    _cuda_tensor(q, "q")
    code = _act_code(q, "q")
    qs = _rows(q, "q", 3)
    _check_caches(key_cache, value_cache, dev)
    _index(block_tables, "block_tables", torch.int32, 2, dev)
    _index(seq_lens, "seq_lens", torch.int32, 1, dev)
    H, D = q.shape[1], q.shape[2]
    Hkv = key_cache.shape[2]
    if key_cache.shape[3] != D:
        raise ValueError(f"{name}: head_dim {D} != cache head_dim {key_cache.shape[3]}")
    if D not in (64, 128):
        raise ValueError(f"{name}: head_dim must be 64 or 128, got {D}")
    if H % Hkv:
        raise ValueError(f"{name}: num_heads {H} not a multiple of num_kv_heads {Hkv}")
    ccode = _DTYPE_CODE[key_cache.dtype]
    if not _is_fp8(key_cache.dtype) and key_cache.dtype != q.dtype:
        raise TypeError(f"{name}: cache dtype {key_cache.dtype} must equal q dtype {q.dtype} or be fp8")
    if _is_fp8(key_cache.dtype) and q.dtype == torch.float32:
        raise TypeError(f"{name}: fp8 caches need float16/bfloat16 queries")
    if out is None:
        out = torch.empty_like(q)
    else:
        _cuda_tensor(out, "out", dev)
        if out.shape != q.shape or out.dtype != q.dtype:
            raise ValueError(f"{name}: out must be {tuple(q.shape)} {q.dtype}")
    os_ = _rows(out, "out", 3)
    return code, ccode, qs, os_, out, H, Hkv, D


def paged_attention_decode(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float, *,
                           sliding_window: int = -1, k_scale=None, v_scale=None,
                           out: Optional[torch.Tensor] = None, max_seq_len: Optional[int] = None,
                           num_splits: Optional[int] = None, use_tensor_cores: bool = True) -> torch.Tensor:
    """Paged decode attention: q ``[num_seqs, num_heads, head_dim]`` (the last position of each
    sequence) against the paged K/V (``seq_lens`` tokens each). ``max_seq_len`` (host int) avoids a
    device sync when given; ``num_splits`` forces the split-K factor (default: heuristic).
    fp16/bf16 with up to 8 query heads per KV head run on tensor cores (mma.sync, sm_80+) unless
    ``use_tensor_cores=False``; other shapes use the CUDA-core kernel."""
    code, ccode, qs, os_, out, H, Hkv, D = _check_attn(q, key_cache, value_cache, block_tables,
                                                        seq_lens, out, "paged_attention_decode")
    B = q.shape[0]
    if seq_lens.shape[0] != B or block_tables.shape[0] < B:
        raise ValueError("paged_attention_decode: seq_lens / block_tables must have num_seqs rows")
    if B == 0:
        return out
    if max_seq_len is None:
        max_seq_len = int(seq_lens.max().item())
    ns, _ = decode_split_plan(B, H, Hkv, max_seq_len, sliding_window, _sm_count(q.device), num_splits)
    tmp_out = tmp_ml = None
    if ns > 1:
        tmp_out = torch.empty(B * H * ns * D, dtype=torch.float32, device=q.device)
        tmp_ml = torch.empty(B * H * ns * 2, dtype=torch.float32, device=q.device)
    ksp = vsp = 0
    if _is_fp8(key_cache.dtype):
        kst, vst = _scale_ptr(k_scale, q.device, "k_scale"), _scale_ptr(v_scale, q.device, "v_scale")
        ksp, vsp = kst.data_ptr(), vst.data_ptr()
    _C().paged_attention(out.data_ptr(), os_, q.data_ptr(), qs, key_cache.data_ptr(), value_cache.data_ptr(),
                         block_tables.data_ptr(), block_tables.shape[1], seq_lens.data_ptr(), 0, B, B, H, Hkv,
                         D, key_cache.shape[1], float(scale), int(sliding_window), code, ccode, ksp, vsp, ns,
                         0,  # each sequence split evenly over the ns partitions
                         tmp_out.data_ptr() if ns > 1 else 0, tmp_ml.data_ptr() if ns > 1 else 0,
                         int(use_tensor_cores), _stream(q))
    return out


def prefill_attention(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                      block_tables: torch.Tensor, seq_lens: torch.Tensor,
                      query_start_loc: torch.Tensor, scale: float, *, sliding_window: int = -1,
                      k_scale=None, v_scale=None, out: Optional[torch.Tensor] = None,
                      max_query_len: Optional[int] = None, use_tensor_cores: bool = True) -> torch.Tensor:
    """Varlen causal (chunked) prefill: q ``[num_tokens, num_heads, head_dim]`` packed by
    ``query_start_loc``; sequence s's queries are its last ``qsl[s+1]-qsl[s]`` of ``seq_lens[s]``
    positions. All K/V (prefix + this step's, already written) are read from the paged cache.
    fp16/bf16 run on tensor cores (mma.sync) unless ``use_tensor_cores=False``."""
    code, ccode, qs, os_, out, H, Hkv, D = _check_attn(q, key_cache, value_cache, block_tables,
                                                        seq_lens, out, "prefill_attention")
    _index(query_start_loc, "query_start_loc", torch.int32, 1, q.device)
    S = seq_lens.shape[0]
    if query_start_loc.shape[0] != S + 1 or block_tables.shape[0] < S:
        raise ValueError("prefill_attention: query_start_loc must have num_seqs+1 entries")
    T = q.shape[0]
    if T == 0 or S == 0:
        return out
    if max_query_len is None:
        max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max().item())
    ksp = vsp = 0
    if _is_fp8(key_cache.dtype):
        kst, vst = _scale_ptr(k_scale, q.device, "k_scale"), _scale_ptr(v_scale, q.device, "v_scale")
        ksp, vsp = kst.data_ptr(), vst.data_ptr()
    _C().prefill_attention(out.data_ptr(), os_, q.data_ptr(), qs, key_cache.data_ptr(), value_cache.data_ptr(),
                           block_tables.data_ptr(), block_tables.shape[1], seq_lens.data_ptr(),
                           query_start_loc.data_ptr(), T, S, int(max_query_len), H, Hkv, D, key_cache.shape[1],
                           float(scale), int(sliding_window), code, ccode, ksp, vsp, int(bool(use_tensor_cores)),
                           _stream(q))
    return out


# --------------------------------------------------------------------------- norms / activations
def _as_rows(x, name):
    """[*, hidden] with a packed last dim -> (num_rows, row_stride, hidden)."""
    if x.dim() < 1 or x.stride(-1) != 1:
        raise ValueError(f"{name}: last dim must be contiguous")
    hidden = x.shape[-1]
    if x.dim() == 1:
        return 1, hidden, hidden
    lead = x.shape[:-1]
    rows = math.prod(lead)
    # all leading dims must collapse into one stride
    stride = x.stride(-2)
    exp = stride * x.shape[-2]
    for d in range(x.dim() - 3, -1, -1):
        if x.shape[d] > 1 and x.stride(d) != exp:
            raise ValueError(f"{name}: leading dims must be collapsible (strides {x.stride()})")
        exp *= x.shape[d]
    return rows, stride if rows > 1 else hidden, hidden


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
             out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``out = x / sqrt(mean(x^2) + eps) * weight`` over the last dim."""
    _cuda_tensor(x, "x"); _cuda_tensor(weight, "weight", x.device)
    code = _act_code(x, "x")
    if weight.dtype != x.dtype or weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"weight must be [{x.shape[-1]}] {x.dtype}")
    _contig(weight, "weight")
    rows, xs, hidden = _as_rows(x, "x")
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    elif out.shape != x.shape or out.dtype != x.dtype:
        raise ValueError("out must match x")
    _, os_, _ = _as_rows(out, "out")
    _C().rms_norm(out.data_ptr(), os_, x.data_ptr(), xs, weight.data_ptr(), float(eps), rows, hidden, code,
                  _stream(x))
    return out


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float = 1e-6) -> Tuple[torch.Tensor, torch.Tensor]:
    """In place: ``residual <- x + residual``; ``x <- rms_norm(residual) * weight``. Returns (x, residual)."""
    _cuda_tensor(x, "x"); _cuda_tensor(residual, "residual", x.device); _cuda_tensor(weight, "weight", x.device)
    code = _act_code(x, "x")
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise ValueError("residual must match x in shape and dtype")
    if weight.dtype != x.dtype or weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"weight must be [{x.shape[-1]}] {x.dtype}")
    _contig(weight, "weight")
    rows, xs, hidden = _as_rows(x, "x")
    _, rs, _ = _as_rows(residual, "residual")
    _C().fused_add_rms_norm(x.data_ptr(), xs, residual.data_ptr(), rs, weight.data_ptr(), float(eps), rows,
                            hidden, code, _stream(x))
    return x, residual


def silu_and_mul(x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``out = silu(x[..., :d]) * x[..., d:]`` with ``d = x.shape[-1] // 2``."""
    _cuda_tensor(x, "x")
    code = _act_code(x, "x")
    if x.shape[-1] % 2:
        raise ValueError("silu_and_mul: last dim must be even")
    rows, xs, two_d = _as_rows(x, "x")
    d = two_d // 2
    if out is None:
        out = torch.empty(*x.shape[:-1], d, dtype=x.dtype, device=x.device)
    elif tuple(out.shape) != (*x.shape[:-1], d) or out.dtype != x.dtype:
        raise ValueError("silu_and_mul: bad out shape/dtype")
    _, os_, _ = _as_rows(out, "out")
    _C().silu_and_mul(out.data_ptr(), os_, x.data_ptr(), xs, rows, d, code, _stream(x))
    return out


# --------------------------------------------------------------------------- rotary
def rotary_embedding(positions: torch.Tensor, query: torch.Tensor, key: Optional[torch.Tensor],
                     cos_sin_cache: torch.Tensor, is_neox: bool = True,
                     head_size: Optional[int] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """In place on query ``[T, H, D]`` and key ``[T, Hkv, D]`` (or 2-D ``[T, H*D]`` with
    ``head_size``; row-strided views such as slices of a fused qkv are fine). ``cos_sin_cache``:
    float32 ``[max_position, rot_dim]`` from :func:`compute_cos_sin_cache`."""
    dev = query.device
    _cuda_tensor(query, "query"); _cuda_tensor(positions, "positions", dev); _cuda_tensor(cos_sin_cache, "cos_sin_cache", dev)
    code = _act_code(query, "query")
    if positions.dtype != torch.int64 or positions.dim() != 1 or positions.shape[0] != query.shape[0]:
        raise ValueError("positions must be int64 [num_tokens]")
    _contig(positions, "positions")
    if cos_sin_cache.dtype != torch.float32 or cos_sin_cache.dim() != 2:
        raise TypeError("cos_sin_cache must be float32 [max_position, rot_dim]")
    _contig(cos_sin_cache, "cos_sin_cache")

    def view3(t, name):
        if t.dim() == 2:
            if not head_size:
                raise ValueError(f"{name}: 2-D input needs head_size")
            t = t.view(t.shape[0], -1, head_size) if t.is_contiguous() else t.unflatten(-1, (-1, head_size))
        _rows(t, name, 3)
        return t

    q3 = view3(query, "query")
    T, H, D = q3.shape
    k3, ks, Hkv = None, 0, 0
    if key is not None:
        _cuda_tensor(key, "key", dev)
        if key.dtype != query.dtype:
            raise TypeError("key dtype must equal query dtype")
        k3 = view3(key, "key")
        if k3.shape[0] != T or k3.shape[2] != D:
            raise ValueError("key must be [num_tokens, num_kv_heads, head_dim]")
        ks, Hkv = k3.stride(0), k3.shape[1]
    rot = cos_sin_cache.shape[1]
    if rot > D or rot % 2:
        raise ValueError(f"rot_dim {rot} must be even and <= head_dim {D}")
    _C().rotary_embedding(positions.data_ptr(), q3.data_ptr(), q3.stride(0), k3.data_ptr() if k3 is not None else 0,
                          ks, cos_sin_cache.data_ptr(), T, H, Hkv, D, rot, int(bool(is_neox)), code, _stream(query))
    return query, key


# --------------------------------------------------------------------------- sampling
def _logits(logits):
    _cuda_tensor(logits, "logits")
    code = _act_code(logits, "logits")
    if logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError("logits must be [batch, vocab] with a contiguous last dim")
    return code


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """Greedy token per row (int64 ``[batch]``; lowest index on ties)."""
    code = _logits(logits)
    B, V = logits.shape
    out = torch.empty(B, dtype=torch.int64, device=logits.device)
    if B:
        _C().argmax(out.data_ptr(), logits.data_ptr(), logits.stride(0), B, V, code, _stream(logits))
    return out


def _per_row(p, B, dtype, device, name):
    if p is None:
        return None
    if not isinstance(p, torch.Tensor):
        return torch.full((B,), p, dtype=dtype, device=device)
    _cuda_tensor(p, name, device)
    if p.numel() == 1 and B != 1:
        p = p.reshape(1).expand(B)
    if p.shape != (B,):
        raise ValueError(f"{name}: expected [{B}], got {tuple(p.shape)}")
    return p.to(dtype).contiguous()


def sample(logits: torch.Tensor, temperature=None, top_k=None, top_p=None, min_p=None, *,
           uniform: Optional[torch.Tensor] = None, seed: Optional[int] = None,
           offset: int = 0) -> torch.Tensor:
    """Per-row temperature / top-k / top-p / min-p sampling on the GPU (no full sort).

    Each parameter is a per-row tensor ``[batch]`` or a scalar (None = off; temperature <= 0 =
    greedy). Randomness: ``uniform`` (float32 ``[batch]`` in [0, 1)) or ``seed`` + ``offset`` (the
    kernel derives u = reference.seeded_uniform(seed, offset)); otherwise ``torch.rand``.
    Returns int64 ``[batch]``."""
    code = _logits(logits)
    B, V = logits.shape
    dev = logits.device
    out = torch.empty(B, dtype=torch.int64, device=dev)
    if B == 0:
        return out
    t = _per_row(temperature, B, torch.float32, dev, "temperature")
    k = _per_row(top_k, B, torch.int32, dev, "top_k")
    p = _per_row(top_p, B, torch.float32, dev, "top_p")
    m = _per_row(min_p, B, torch.float32, dev, "min_p")
    if uniform is None and seed is None:
        uniform = torch.rand(B, dtype=torch.float32, device=dev)
    if uniform is not None:
        uniform = _per_row(uniform, B, torch.float32, dev, "uniform")
    ptr = lambda x: 0 if x is None else x.data_ptr()  # noqa: E731
    _C().sample(out.data_ptr(), logits.data_ptr(), logits.stride(0), B, V, code, ptr(t), ptr(k), ptr(p), ptr(m),
                ptr(uniform), int(seed or 0) & ((1 << 64) - 1), int(offset) & ((1 << 64) - 1), _stream(logits))
    return out


# --------------------------------------------------------------------------- guided decoding
def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor,
                        rows: Optional[torch.Tensor] = None) -> None:
    """In place: ``logits[rows[i], t] = -inf`` where bit t of ``bitmask[i]`` is 0 (int32 words,
    bit t % 32 of word t // 32; tokens past the mask's width are disallowed). ``rows``: int64
    ``[n]`` on the device (None: rows 0..n-1). One kernel; rows not named are untouched."""
    code = _logits(logits)
    _index(bitmask, "bitmask", torch.int32, 2, logits.device)
    n = bitmask.shape[0]
    if rows is not None:
        _index(rows, "rows", torch.int64, 1, logits.device)
        if rows.shape[0] != n:
            raise ValueError(f"rows: expected {n} entries, got {rows.shape[0]}")
    elif n > logits.shape[0]:
        raise ValueError(f"bitmask has {n} rows, logits only {logits.shape[0]}")
    if n:
        _C().apply_token_bitmask(logits.data_ptr(), logits.stride(0), bitmask.data_ptr(),
                                 bitmask.shape[1], 0 if rows is None else rows.data_ptr(), n,
                                 logits.shape[1], code, _stream(logits))


def host_device_pointer(host: torch.Tensor) -> int:
    """The device address of a page-locked host tensor (for :func:`wait_host_flag`)."""
    if not host.is_pinned():
        raise ValueError("host_device_pointer: the tensor must be in page-locked memory")
    return _C().host_device_pointer(host.data_ptr())


class MappedHostFlag:
    """One uint32 in page-locked, device-mapped host memory of its own (not torch's pinned
    pool, whose blocks hold several tensors): `value` is the host's view, `device_ptr` the
    address a kernel polls (:func:`wait_host_flag`)."""

    def __init__(self):
        import ctypes

        import numpy as np
        self._host, self.device_ptr = _C().host_alloc_mapped(64)
        self.value = np.ctypeslib.as_array((ctypes.c_uint32 * 1).from_address(self._host))
        self.value[0] = 0

    def close(self) -> None:
        if self._host:
            _C().host_free(self._host)
            self._host = 0

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def stream_wait_value_geq(flag_device_ptr: int, target: int, device: torch.device) -> bool:
    """Queue on the current stream a stream memory operation (cuStreamWaitValue32) that holds
    it until the uint32 host flag reaches ``target``: no kernel and no timeout. False (and
    nothing queued) where the driver does not offer it."""
    return bool(_C().stream_wait_value_geq(int(flag_device_ptr), int(target) & 0xFFFFFFFF,
                                           torch.cuda.current_stream(device).cuda_stream))


def wait_host_flag(flag_device_ptr: int, target: int, device: torch.device,
                   timeout_ms: int = 60_000, timed_out: Optional[torch.Tensor] = None) -> None:
    """Queue on the current stream a wait until the uint32 host flag (device address from
    :func:`host_device_pointer`) reaches ``target`` (the host counts it up). ``timed_out``:
    an int32 [1] device tensor set to 1 if ``timeout_ms`` passes first."""
    ptr = 0
    if timed_out is not None:
        _index(timed_out, "timed_out", torch.int32, 1, None)
        ptr = timed_out.data_ptr()
    _C().wait_host_flag(int(flag_device_ptr), int(target) & 0xFFFFFFFF, int(timeout_ms), ptr,
                        torch.cuda.current_stream(device).cuda_stream)
