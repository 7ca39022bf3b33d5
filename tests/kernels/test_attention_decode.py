import math

import pytest
import torch

from conftest import tol
from paged_utils import make_paged_cache

# (num_heads, num_kv_heads): MHA, GQA 4, MQA 16, GQA 16, GQA 3, GQA 8. Groups of up to 8 run on
# the tensor-core kernel (fp16/bf16, power-of-two blocks), the rest on the CUDA-core kernel.
HEADS = [(8, 8), (8, 2), (16, 1), (32, 2), (12, 4), (24, 3)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("block_size", [8, 16, 32, 24])  # 24: the non-power-of-two page math
@pytest.mark.parametrize("heads", HEADS)
def test_paged_decode(ops, dtype, head_dim, block_size, heads):
    from llmcore.ops import reference as ref

    H, Hkv = heads
    seq_lens = [1, 17, 64, 300, 1000, 33]
    kc, vc, bt, sl = make_paged_cache(seq_lens, Hkv, head_dim, block_size, dtype, "cuda", seed=1)
    q = torch.randn(len(seq_lens), H, head_dim, device="cuda", dtype=dtype)
    scale = 1 / math.sqrt(head_dim)
    exp = ref.paged_attention_decode(q, kc, vc, bt, sl, scale)
    atol, rtol = tol(dtype)
    for ns in (None, 1, 3):
        for tc in (True, False):
            out = ops.paged_attention_decode(q, kc, vc, bt, sl, scale, num_splits=ns, use_tensor_cores=tc)
            torch.testing.assert_close(out.float(), exp.float(), atol=atol, rtol=rtol,
                                       msg=f"num_splits={ns} tensor_cores={tc}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_paged_decode_long_split_k(ops, dtype, head_dim):
    from llmcore.ops import reference as ref

    H, Hkv = 16, 4
    seq_lens = [8191, 20000, 5, 4097]
    kc, vc, bt, sl = make_paged_cache(seq_lens, Hkv, head_dim, 16, dtype, "cuda", seed=2)
    q = torch.randn(len(seq_lens), H, head_dim, device="cuda", dtype=dtype)
    exp = ref.paged_attention_decode(q, kc, vc, bt, sl, 0.1)
    atol, rtol = tol(dtype)
    for ns in (None, 1, 7, 64):
        for tc in (True, False):
            out = ops.paged_attention_decode(q, kc, vc, bt, sl, 0.1, num_splits=ns, max_seq_len=20000,
                                             use_tensor_cores=tc)
            torch.testing.assert_close(out.float(), exp.float(), atol=atol, rtol=rtol,
                                       msg=f"num_splits={ns} tensor_cores={tc}")


@pytest.mark.parametrize("window", [1, 16, 100, 5000])
@pytest.mark.parametrize("num_splits", [None, 1, 4])
def test_paged_decode_sliding_window(ops, window, num_splits):
    from llmcore.ops import reference as ref

    dtype = torch.float16
    seq_lens = [3, 50, 700, 2100]
    kc, vc, bt, sl = make_paged_cache(seq_lens, 2, 128, 16, dtype, "cuda", seed=3)
    q = torch.randn(len(seq_lens), 8, 128, device="cuda", dtype=dtype)
    exp = ref.paged_attention_decode(q, kc, vc, bt, sl, 0.09, sliding_window=window)
    for tc in (True, False):
        out = ops.paged_attention_decode(q, kc, vc, bt, sl, 0.09, sliding_window=window, num_splits=num_splits,
                                         use_tensor_cores=tc)
        torch.testing.assert_close(out.float(), exp.float(), atol=6e-3, rtol=6e-3, msg=f"tensor_cores={tc}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fp8", ["e4m3", "e5m2"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_paged_decode_fp8_cache(ops, dtype, fp8, head_dim):
    from llmcore.ops import reference as ref

    cdt = torch.float8_e4m3fn if fp8 == "e4m3" else torch.float8_e5m2
    ks, vs = torch.tensor([0.05], device="cuda"), torch.tensor([0.02], device="cuda")
    seq_lens = [9, 129, 1500]
    kc, vc, bt, sl = make_paged_cache(seq_lens, 2, head_dim, 16, dtype, "cuda", cache_dtype=cdt,
                                      k_scale=0.05, v_scale=0.02, seed=4)
    q = torch.randn(len(seq_lens), 4, head_dim, device="cuda", dtype=dtype)
    exp = ref.paged_attention_decode(q, kc, vc, bt, sl, 0.1, k_scale=ks, v_scale=vs)
    atol, rtol = tol(dtype)
    for ns in (None, 1, 3):  # the scales are folded into q and the output, split or not
        for tc in (True, False):
            out = ops.paged_attention_decode(q, kc, vc, bt, sl, 0.1, k_scale=ks, v_scale=vs, num_splits=ns,
                                             use_tensor_cores=tc)
            torch.testing.assert_close(out.float(), exp.float(), atol=atol, rtol=rtol,
                                       msg=f"num_splits={ns} tensor_cores={tc}")


@pytest.mark.parametrize("cache", ["same", "e4m3"])
@pytest.mark.parametrize("block_size", [8, 32])
def test_paged_decode_ignores_stale_slots(ops, cache, block_size):
    """Slots past a sequence's end (in its last page) and unused pages hold NaN: the kernels must
    neither read them into the softmax nor let P = 0 meet a NaN value in P.V (unaligned split
    starts and ends included)."""
    from llmcore.ops import reference as ref

    dtype = torch.bfloat16
    cdt = dtype if cache == "same" else torch.float8_e4m3fn
    seq_lens = [5, 37, 300, 1001]
    kc, vc, bt, sl = make_paged_cache(seq_lens, 2, 128, block_size, dtype, "cuda", cache_dtype=cdt, seed=6)
    used = torch.zeros(kc.shape[0], block_size, dtype=torch.bool, device="cuda")
    for s, L in enumerate(seq_lens):
        for i in range(L):
            used[bt[s, i // block_size], i % block_size] = True
    for cache_t in (kc, vc):
        view = cache_t.view(torch.uint8) if cdt != dtype else cache_t
        view[~used] = 0x7F if cdt != dtype else float("nan")  # 0x7F: e4m3 NaN
    ks = vs = torch.tensor([1.0], device="cuda")
    q = torch.randn(len(seq_lens), 8, 128, device="cuda", dtype=dtype)
    kw = {} if cdt == dtype else {"k_scale": ks, "v_scale": vs}
    exp = ref.paged_attention_decode(q, kc, vc, bt, sl, 0.09, **kw)
    assert torch.isfinite(exp).all()
    for ns in (1, 3, 7):
        for tc in (True, False):
            out = ops.paged_attention_decode(q, kc, vc, bt, sl, 0.09, num_splits=ns, use_tensor_cores=tc, **kw)
            torch.testing.assert_close(out.float(), exp.float(), atol=3e-2, rtol=3e-2,
                                       msg=f"num_splits={ns} tensor_cores={tc}")


def test_paged_decode_strided_q_and_out(ops):
    from llmcore.ops import reference as ref

    kc, vc, bt, sl = make_paged_cache([40, 7], 2, 64, 8, torch.float16, "cuda")
    qkv = torch.randn(2, 12, 64, device="cuda", dtype=torch.float16)
    q = qkv[:, :8]
    out = torch.zeros(2, 10, 64, device="cuda", dtype=torch.float16)[:, 2:]
    ops.paged_attention_decode(q, kc, vc, bt, sl, 0.125, out=out)
    exp = ref.paged_attention_decode(q, kc, vc, bt, sl, 0.125)
    torch.testing.assert_close(out.float(), exp.float(), atol=6e-3, rtol=6e-3)


def test_paged_decode_errors(ops):
    kc, vc, bt, sl = make_paged_cache([4], 2, 64, 8, torch.float16, "cuda")
    with pytest.raises(ValueError):  # head_dim mismatch
        ops.paged_attention_decode(torch.randn(1, 4, 128, device="cuda", dtype=torch.float16), kc, vc, bt, sl, 1.0)
    with pytest.raises(TypeError):  # dtype mismatch
        ops.paged_attention_decode(torch.randn(1, 4, 64, device="cuda"), kc, vc, bt, sl, 1.0)
    with pytest.raises(TypeError):
        ops.paged_attention_decode(torch.randn(1, 4, 64, device="cuda", dtype=torch.float16), kc, vc,
                                   bt.long(), sl, 1.0)
