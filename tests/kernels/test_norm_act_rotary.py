import pytest
import torch

from conftest import tol

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 1000, 4096, 8192])
@pytest.mark.parametrize("tokens", [1, 7, 130])
def test_rms_norm(ops, dtype, hidden, tokens):
    from llmcore.ops import reference as ref

    x = torch.randn(tokens, hidden, device="cuda", dtype=dtype)
    w = torch.randn(hidden, device="cuda", dtype=dtype)
    atol, rtol = tol(dtype)
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-5), ref.rms_norm(x, w, 1e-5), atol=atol, rtol=rtol)
    # strided rows (a slice of a wider buffer)
    big = torch.randn(tokens, hidden + 64, device="cuda", dtype=dtype)
    xs = big[:, :hidden]
    torch.testing.assert_close(ops.rms_norm(xs, w, 1e-5), ref.rms_norm(xs, w, 1e-5), atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 4096, 5120])
def test_fused_add_rms_norm(ops, dtype, hidden):
    from llmcore.ops import reference as ref

    x = torch.randn(33, hidden, device="cuda", dtype=dtype)
    r = torch.randn(33, hidden, device="cuda", dtype=dtype)
    w = torch.randn(hidden, device="cuda", dtype=dtype)
    x1, r1 = x.clone(), r.clone()
    x2, r2 = x.clone(), r.clone()
    ops.fused_add_rms_norm(x1, r1, w, 1e-6)
    ref.fused_add_rms_norm(x2, r2, w, 1e-6)
    atol, rtol = tol(dtype)
    torch.testing.assert_close(r1, r2, atol=0, rtol=0)
    torch.testing.assert_close(x1, x2, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [11, 128, 11008, 14336])
def test_silu_and_mul(ops, dtype, d):
    from llmcore.ops import reference as ref

    x = torch.randn(19, 2 * d, device="cuda", dtype=dtype)
    atol, rtol = tol(dtype)
    torch.testing.assert_close(ops.silu_and_mul(x), ref.silu_and_mul(x), atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize("head_dim,rot_dim", [(64, 64), (128, 128), (128, 64)])
@pytest.mark.parametrize("scaling", [None, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                                     {"rope_type": "linear", "factor": 4.0},
                                     {"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 2048}])
def test_rotary(ops, dtype, is_neox, head_dim, rot_dim, scaling):
    from llmcore.ops import reference as ref

    cache = ops.compute_cos_sin_cache(rot_dim, 4096, 500000.0, scaling, device="cuda")
    T, H, Hkv = 50, 8, 2
    qkv = torch.randn(T, (H + 2 * Hkv) * head_dim, device="cuda", dtype=dtype)
    q = qkv[:, : H * head_dim].view(T, H, head_dim)
    k = qkv[:, H * head_dim : (H + Hkv) * head_dim].view(T, Hkv, head_dim)
    pos = torch.randint(0, 4096, (T,), device="cuda")
    q2, k2 = q.clone(), k.clone()
    ops.rotary_embedding(pos, q, k, cache, is_neox)
    ref.rotary_embedding(pos, q2, k2, cache, is_neox)
    atol, rtol = tol(dtype)
    torch.testing.assert_close(q, q2, atol=atol, rtol=rtol)
    torch.testing.assert_close(k, k2, atol=atol, rtol=rtol)
