"""The attention backend (selected for the device) vs a naive per-sequence reference:
fresh prefills, prefills after a cached prefix, decodes, GQA, sliding window, scrambled
block tables. A GPU backend plugged in through get_attn_backend runs the same checks."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "models"))
from paged_kv_helper import build_metadata  # noqa: E402

from llmcore.layers.attention import Attention, cpu_backend  # noqa: E402
from llmcore.layers.context import LayerContext  # noqa: E402


def _reference(q, k_all, v_all, ctx, scale, window):
    """q [n, H, D]; k_all/v_all [ctx+n, KV, D] -> [n, H, D]."""
    n, H, D = q.shape
    KV = k_all.shape[1]
    k = k_all.repeat_interleave(H // KV, dim=1)
    v = v_all.repeat_interleave(H // KV, dim=1)
    s = torch.einsum("qhd,khd->hqk", q.double(), k.double()) * scale
    qpos = torch.arange(ctx, ctx + n)[:, None]
    kpos = torch.arange(ctx + n)[None, :]
    ok = kpos <= qpos
    if window is not None:
        ok &= kpos > qpos - window
    s = s.masked_fill(~ok, float("-inf"))
    return torch.einsum("hqk,khd->qhd", s.softmax(-1), v.double()).float()


@pytest.mark.parametrize("decode_kernel", [True, False], ids=["cpp_decode", "torch_decode"])
@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("heads", [(4, 4), (6, 2)])
def test_backend_matches_reference(window, heads, decode_kernel, monkeypatch):
    # the CPU backend decodes fp32 with the C++ paged kernel; its torch path (gather +
    # masked SDPA) is the fallback for other dtypes: both are checked
    if not decode_kernel:
        monkeypatch.setattr(cpu_backend, "_paged_decode_f32", None)
    elif cpu_backend._paged_decode_f32 is None:
        pytest.skip("llmcore._core has no paged_decode_attention_f32")
    torch.manual_seed(0)
    H, KV = heads
    D, bs, nblocks = 16, 4, 64
    dev = "cpu"
    attn = Attention(H, D, D ** -0.5, ctx=LayerContext.single_rank(dev, torch.float32),
                     num_kv_heads=KV, sliding_window=window)
    key_cache = torch.zeros(nblocks, bs, KV, D)
    value_cache = torch.zeros(nblocks, bs, KV, D)
    rng = np.random.default_rng(0)
    free = list(rng.permutation(nblocks))
    # (context_len, new tokens): fresh prefills (two of equal length -> batched), a chunk
    # after a cached prefix, then decodes
    seqs = [(0, 7), (0, 7), (0, 3), (9, 6), (1, 1), (12, 1), (5, 1), (17, 1)]
    num_prefills = 5
    items, hist_k, hist_v = [], [], []
    for ctx, n in seqs:
        blocks = [int(free.pop()) for _ in range(-(-(ctx + n) // bs))]
        items.append((blocks, ctx, n))
        # the cached prefix, written into the cache directly
        kc, vc = torch.randn(ctx, KV, D), torch.randn(ctx, KV, D)
        for p in range(ctx):
            key_cache[blocks[p // bs], p % bs] = kc[p]
            value_cache[blocks[p // bs], p % bs] = vc[p]
        hist_k.append(kc)
        hist_v.append(vc)
    md, _ = build_metadata(items, num_prefills, bs, dev)
    T = sum(n for _, n in seqs)
    qkv = torch.randn(T, (H + 2 * KV) * D)  # strided q/k/v views, like the model's
    q, k, v = qkv[:, :H * D], qkv[:, H * D:(H + KV) * D], qkv[:, (H + KV) * D:]
    out = attn(q, k, v, (key_cache, value_cache), md)
    assert out.shape == (T, H * D)
    qsl = md.query_start_loc_host
    for i, (ctx, n) in enumerate(seqs):
        s, e = int(qsl[i]), int(qsl[i + 1])
        k_all = torch.cat([hist_k[i], k[s:e].view(n, KV, D)])
        v_all = torch.cat([hist_v[i], v[s:e].view(n, KV, D)])
        ref = _reference(q[s:e].view(n, H, D), k_all, v_all, ctx, D ** -0.5, window)
        torch.testing.assert_close(out[s:e].view(n, H, D), ref, atol=1e-5, rtol=1e-4,
                                   msg=f"seq {i} (ctx={ctx}, n={n})")
    # the new k/v were written at slot_mapping
    slots = md.slot_mapping
    torch.testing.assert_close(key_cache.view(-1, KV, D)[slots], k.reshape(T, KV, D))
    torch.testing.assert_close(value_cache.view(-1, KV, D)[slots], v.reshape(T, KV, D))


def test_no_cache_prefill_only():
    """Empty caches (profiling run): prefill attends to its own tokens, writes nothing."""
    torch.manual_seed(1)
    H, KV, D = 4, 2, 8
    attn = Attention(H, D, D ** -0.5, ctx=LayerContext.single_rank("cpu", torch.float32),
                     num_kv_heads=KV)
    md, _ = build_metadata([([0, 1], 0, 5), ([2], 0, 3)], 2, 4)
    q, k, v = torch.randn(8, H * D), torch.randn(8, KV * D), torch.randn(8, KV * D)
    empty = torch.empty(0)
    out = attn(q, k, v, (empty, empty), md)
    ref = _reference(q[:5].view(5, H, D), k[:5].view(5, KV, D), v[:5].view(5, KV, D), 0,
                     D ** -0.5, None)
    torch.testing.assert_close(out[:5].view(5, H, D), ref, atol=1e-5, rtol=1e-4)
