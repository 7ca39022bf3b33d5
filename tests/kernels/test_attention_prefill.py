import math

import pytest
import torch

from conftest import tol
from paged_utils import make_paged_cache


def _case(seq_lens, q_lens, H, Hkv, D, bs, dtype, cache_dtype=None, ks=1.0, vs=1.0, seed=0):
    kc, vc, bt, sl = make_paged_cache(seq_lens, Hkv, D, bs, dtype, "cuda", cache_dtype=cache_dtype,
                                      k_scale=ks, v_scale=vs, seed=seed)
    qsl = torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    q = torch.randn(sum(q_lens), H, D, device="cuda", dtype=dtype)
    return q, kc, vc, bt, sl, qsl


# (seq_lens, query_lens): full prefills, prefix + chunk, decode-like rows, empty query, long
CASES = {
    "ragged_full": ([1, 17, 64, 130], [1, 17, 64, 130]),
    "prefix_chunk": ([100, 517, 64, 9], [28, 200, 1, 9]),
    "with_empty": ([40, 12, 300], [0, 12, 77]),
    "long": ([2500, 1100], [700, 1100]),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("heads", [(8, 8), (8, 2), (12, 1)])
@pytest.mark.parametrize("case", ["ragged_full", "prefix_chunk"])
def test_prefill(ops, dtype, head_dim, block_size, heads, case):
    from llmcore.ops import reference as ref

    H, Hkv = heads
    seq_lens, q_lens = CASES[case]
    q, kc, vc, bt, sl, qsl = _case(seq_lens, q_lens, H, Hkv, head_dim, block_size, dtype)
    scale = 1 / math.sqrt(head_dim)
    exp = ref.prefill_attention(q, kc, vc, bt, sl, qsl, scale)
    atol, rtol = tol(dtype)
    for tc in (True, False):
        out = ops.prefill_attention(q, kc, vc, bt, sl, qsl, scale, use_tensor_cores=tc)
        torch.testing.assert_close(out.float(), exp.float(), atol=atol, rtol=rtol, msg=f"tensor_cores={tc}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ["with_empty", "long"])
@pytest.mark.parametrize("window", [-1, 1, 64, 333])
def test_prefill_long_empty_window(ops, dtype, case, window):
    from llmcore.ops import reference as ref

    seq_lens, q_lens = CASES[case]
    q, kc, vc, bt, sl, qsl = _case(seq_lens, q_lens, 16, 4, 128, 16, dtype, seed=5)
    exp = ref.prefill_attention(q, kc, vc, bt, sl, qsl, 0.08, sliding_window=window)
    atol, rtol = tol(dtype)
    for tc in (True, False):
        out = ops.prefill_attention(q, kc, vc, bt, sl, qsl, 0.08, sliding_window=window, use_tensor_cores=tc)
        torch.testing.assert_close(out.float(), exp.float(), atol=atol, rtol=rtol, msg=f"tensor_cores={tc}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fp8", ["e4m3", "e5m2"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_prefill_fp8_cache(ops, dtype, fp8, head_dim):
    from llmcore.ops import reference as ref

    cdt = torch.float8_e4m3fn if fp8 == "e4m3" else torch.float8_e5m2
    ks, vs = torch.tensor([0.05], device="cuda"), torch.tensor([0.02], device="cuda")
    q, kc, vc, bt, sl, qsl = _case([90, 300], [30, 300], 8, 2, head_dim, 16, dtype, cache_dtype=cdt,
                                   ks=0.05, vs=0.02, seed=6)
    exp = ref.prefill_attention(q, kc, vc, bt, sl, qsl, 0.1, k_scale=ks, v_scale=vs)
    atol, rtol = tol(dtype)
    for tc in (True, False):
        out = ops.prefill_attention(q, kc, vc, bt, sl, qsl, 0.1, k_scale=ks, v_scale=vs, use_tensor_cores=tc)
        torch.testing.assert_close(out.float(), exp.float(), atol=atol, rtol=rtol)


def test_prefill_after_reshape_and_cache_matches_dense(ops):
    """End to end: write this step's K/V with reshape_and_cache, then prefill == dense causal SDPA."""
    torch.manual_seed(0)
    H, Hkv, D, bs = 8, 2, 128, 16
    L = 200
    k = torch.randn(L, Hkv, D, device="cuda", dtype=torch.float16)
    v = torch.randn(L, Hkv, D, device="cuda", dtype=torch.float16)
    q = torch.randn(L, H, D, device="cuda", dtype=torch.float16)
    nb = (L + bs - 1) // bs
    kc = torch.zeros(nb + 2, bs, Hkv, D, device="cuda", dtype=torch.float16)
    vc = torch.zeros_like(kc)
    bt = (torch.randperm(nb + 2, device="cuda")[:nb]).to(torch.int32).view(1, -1)
    pos = torch.arange(L, device="cuda")
    slots = bt[0].long()[pos // bs] * bs + pos % bs
    ops.reshape_and_cache(k, v, kc, vc, slots)
    qsl = torch.tensor([0, L], dtype=torch.int32, device="cuda")
    sl = torch.tensor([L], dtype=torch.int32, device="cuda")
    out = ops.prefill_attention(q, kc, vc, bt, sl, qsl, D ** -0.5)
    exp = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1).float(), k.repeat_interleave(4, 1).transpose(0, 1).float(),
        v.repeat_interleave(4, 1).transpose(0, 1).float(), is_causal=True).transpose(0, 1)
    torch.testing.assert_close(out.float(), exp, atol=6e-3, rtol=6e-3)
