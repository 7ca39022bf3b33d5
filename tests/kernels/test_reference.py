"""CPU tests of the torch reference implementations (these run in CI without a GPU)."""

import math

import pytest
import torch

from llmcore.ops import reference as ref
from llmcore.ops.rope import compute_cos_sin_cache
from paged_utils import make_paged_cache


def _dense(q, k, v, scale, window=-1):
    """Plain causal attention where queries are the last len(q) of len(k) positions."""
    Tq, Tk = q.shape[0], k.shape[0]
    g = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(g, 1)
    v = v.repeat_interleave(g, 1)
    out = torch.empty(q.shape, dtype=torch.float32)
    for i in range(Tq):
        pos = Tk - Tq + i
        lo = 0 if window <= 0 else max(0, pos - window + 1)
        s = torch.einsum("hd,khd->hk", q[i].float(), k[lo : pos + 1].float()) * scale
        out[i] = torch.einsum("hk,khd->hd", torch.softmax(s, -1), v[lo : pos + 1].float())
    return out


@pytest.mark.parametrize("block_size", [8, 16])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("window", [-1, 5])
def test_paged_prefill_reference_matches_dense(block_size, heads, window):
    H, Hkv = heads
    D = 16
    seq_lens = [7, 20, 1]
    q_lens = [7, 6, 1]  # full prefill, prefix + chunk, single token
    kc, vc, bt, sl = make_paged_cache(seq_lens, Hkv, D, block_size, torch.float32, "cpu")
    qsl = torch.tensor([0] + list(torch.tensor(q_lens).cumsum(0)), dtype=torch.int32)
    q = torch.randn(sum(q_lens), H, D)
    out = ref.prefill_attention(q, kc, vc, bt, sl, qsl, 0.25, sliding_window=window)
    for s, (L, ql) in enumerate(zip(seq_lens, q_lens)):
        k = ref.gather_kv(kc, bt[s], L)
        v = ref.gather_kv(vc, bt[s], L)
        exp = _dense(q[qsl[s] : qsl[s + 1]], k, v, 0.25, window)
        torch.testing.assert_close(out[qsl[s] : qsl[s + 1]], exp, atol=1e-5, rtol=1e-5)


def test_decode_reference_equals_last_row_of_prefill():
    kc, vc, bt, sl = make_paged_cache([5, 33], 2, 16, 8, torch.float32, "cpu")
    q = torch.randn(2, 4, 16)
    dec = ref.paged_attention_decode(q, kc, vc, bt, sl, 0.3)
    pre = ref.prefill_attention(q, kc, vc, bt, sl, torch.tensor([0, 1, 2], dtype=torch.int32), 0.3)
    torch.testing.assert_close(dec, pre)


def test_reshape_and_cache_reference_roundtrip():
    kc = torch.zeros(4, 8, 2, 16)
    vc = torch.zeros(4, 8, 2, 16)
    key, value = torch.randn(5, 2, 16), torch.randn(5, 2, 16)
    slots = torch.tensor([3, 9, -1, 31, 0])
    ref.reshape_and_cache(key, value, kc, vc, slots)
    for t, s in enumerate(slots.tolist()):
        if s >= 0:
            torch.testing.assert_close(kc[s // 8, s % 8], key[t])
            torch.testing.assert_close(vc[s // 8, s % 8], value[t])
    assert kc.view(-1, 2, 16)[[1, 2]].abs().sum() == 0


@pytest.mark.skipif(not hasattr(torch, "float8_e4m3fn"), reason="torch without float8")
def test_reshape_and_cache_reference_fp8_scale():
    kc = torch.zeros(2, 8, 1, 16, dtype=torch.float8_e4m3fn)
    vc = torch.zeros_like(kc)
    key = torch.randn(3, 1, 16) * 10
    ref.reshape_and_cache(key, key, kc, vc, torch.tensor([0, 1, 2]), k_scale=2.0, v_scale=2.0)
    back = ref.gather_kv(kc, torch.tensor([0]), 3, scale=2.0)
    torch.testing.assert_close(back, key, atol=0.5, rtol=0.07)


def test_rms_norm_and_fused_add_reference():
    x = torch.randn(3, 64)
    w = torch.randn(64)
    y = ref.rms_norm(x, w, 1e-6)
    torch.testing.assert_close(y, x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * w)
    r = torch.randn(3, 64)
    x2, r2 = x.clone(), r.clone()
    ref.fused_add_rms_norm(x2, r2, w, 1e-6)
    torch.testing.assert_close(r2, x + r)
    torch.testing.assert_close(x2, ref.rms_norm(x + r, w, 1e-6))


def test_silu_and_mul_reference():
    x = torch.randn(4, 10)
    torch.testing.assert_close(ref.silu_and_mul(x), x[:, :5] * torch.sigmoid(x[:, :5]) * x[:, 5:])


@pytest.mark.parametrize("is_neox", [True, False])
def test_rotary_reference_is_rotation(is_neox):
    cache = compute_cos_sin_cache(32, 64, 10000.0)
    q = torch.randn(5, 3, 32)
    k = torch.randn(5, 1, 32)
    pos = torch.tensor([0, 1, 7, 30, 63])
    q2, k2 = q.clone(), k.clone()
    ref.rotary_embedding(pos, q2, k2, cache, is_neox)
    torch.testing.assert_close(q2.norm(dim=-1), q.norm(dim=-1))  # rotations keep norms
    torch.testing.assert_close(q2[0], q[0])  # position 0 is the identity
    # relative-position property: <R(a)q, R(b)k> depends on a-b only
    def rot(x, p):
        x = x.clone().view(1, 1, -1)
        ref.rotary_embedding(torch.tensor([p]), x, None, cache, is_neox)
        return x.view(-1)
    a, b = torch.randn(32), torch.randn(32)
    assert abs(torch.dot(rot(a, 10), rot(b, 3)) - torch.dot(rot(a, 17), rot(b, 10))) < 1e-4


def test_rope_scaling_variants():
    base = compute_cos_sin_cache(64, 128, 500000.0)
    lin = compute_cos_sin_cache(64, 128, 500000.0, {"rope_type": "linear", "factor": 2.0})
    torch.testing.assert_close(lin[10], base[5])
    l3 = compute_cos_sin_cache(64, 128, 500000.0, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    assert l3.shape == (128, 64)
    torch.testing.assert_close(l3[:, 0], base[:, 0])  # highest frequency unscaled
    dyn = compute_cos_sin_cache(64, 128, 10000.0, {"rope_type": "dynamic", "factor": 2.0,
                                                    "original_max_position_embeddings": 128})
    assert dyn.shape == (256, 64)


def test_sampling_reference_filters():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    kept = ref.sampling_kept_probs(logits, temperature=torch.tensor([1.0, 1.0, 0.7, 0.0]),
                                   top_k=torch.tensor([5, 0, 0, 0]), top_p=torch.tensor([1.0, 0.5, 1.0, 1.0]),
                                   min_p=torch.tensor([0.0, 0.0, 0.2, 0.0]))
    assert (kept[0] > 0).sum() == 5
    p1 = torch.softmax(logits[1], -1)
    sel = kept[1] > 0
    assert p1[sel].sum() >= 0.5 and p1[sel].sum() - p1[sel].min() < 0.5
    p2 = torch.softmax(logits[2] / 0.7, -1)
    assert torch.equal(kept[2] > 0, p2 >= 0.2 * p2.max())
    assert (kept[3] > 0).sum() == 1 and kept[3].argmax() == logits[3].argmax()
    toks = ref.sample(logits, temperature=1.0, top_k=1, uniform=torch.rand(4))
    assert torch.equal(toks, logits.argmax(-1))


def test_seeded_uniform_reproducible():
    a = ref.seeded_uniform(1234, 7, 8)
    assert torch.equal(a, ref.seeded_uniform(1234, 7, 8))
    assert not torch.equal(a, ref.seeded_uniform(1234, 8, 8))
    assert ((a >= 0) & (a < 1)).all()


def test_ops_import_without_cuda_module():
    import llmcore.ops as ops

    assert isinstance(ops.cuda_available(), bool)
