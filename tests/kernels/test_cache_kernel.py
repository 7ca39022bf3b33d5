import pytest
import torch

from conftest import tol

FP8 = [d for d in (getattr(torch, "float8_e4m3fn", None), getattr(torch, "float8_e5m2", None)) if d is not None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cache_kind", ["same", "fp8_e4m3", "fp8_e5m2"])
@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("strided", [False, True])
def test_reshape_and_cache(ops, dtype, cache_kind, block_size, head_dim, strided):
    from llmcore.ops import reference as ref

    dev = "cuda"
    cache_dtype = {"same": dtype, "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}[cache_kind]
    T, H, nb = 37, 4, 12
    if strided:  # key/value as slices of a fused qkv buffer
        qkv = torch.randn(T, (8 + 2 * H) * head_dim, device=dev, dtype=dtype)
        key = qkv[:, 8 * head_dim : (8 + H) * head_dim].view(T, H, head_dim)
        value = qkv[:, (8 + H) * head_dim :].view(T, H, head_dim)
    else:
        key = torch.randn(T, H, head_dim, device=dev, dtype=dtype)
        value = torch.randn(T, H, head_dim, device=dev, dtype=dtype)
    slots = torch.randperm(nb * block_size, device=dev)[:T].to(torch.int64)
    slots[3] = -1
    slots[20] = -5
    shape = (nb, block_size, H, head_dim)
    kc = torch.zeros(shape, device=dev, dtype=cache_dtype)
    vc = torch.zeros_like(kc)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    ks = torch.tensor([0.5], device=dev)
    vs = torch.tensor([0.25], device=dev)
    ops.reshape_and_cache(key, value, kc, vc, slots, ks, vs)
    ref.reshape_and_cache(key, value, kc_ref, vc_ref, slots, ks, vs)
    if cache_kind == "same":
        assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)
    else:
        # same fp8 encoding up to rare one-ulp rounding differences of the division
        for a, b in ((kc, kc_ref), (vc, vc_ref)):
            diff = (a.float() - b.float()).abs()
            assert (diff > 0).float().mean() < 1e-3
            torch.testing.assert_close(a.float(), b.float(), atol=0.0, rtol=0.13)


def test_reshape_and_cache_errors(ops):
    kc = torch.zeros(2, 8, 2, 64, device="cuda", dtype=torch.float16)
    k = torch.randn(3, 2, 64, device="cuda", dtype=torch.float16)
    with pytest.raises(TypeError):
        ops.reshape_and_cache(k, k, kc, kc.clone(), torch.zeros(3, dtype=torch.int32, device="cuda"))
    with pytest.raises(ValueError):
        ops.reshape_and_cache(k, k, kc, kc.clone(), torch.zeros(2, dtype=torch.int64, device="cuda"))
