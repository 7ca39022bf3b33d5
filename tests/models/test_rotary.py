"""RoPE scaling variants vs transformers' LlamaRotaryEmbedding."""

from __future__ import annotations

import json

import pytest
import torch

from llmcore.layers.rotary import RotaryEmbedding

HEAD = 64
MAX_POS = 512
THETA = 10000.0


def _hf_cos_sin(rope_parameters, positions):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = LlamaConfig(hidden_size=HEAD * 4, num_attention_heads=4, head_dim=HEAD,
                      max_position_embeddings=MAX_POS,
                      rope_parameters={**rope_parameters, "rope_theta": THETA})
    rot = LlamaRotaryEmbedding(config=cfg)
    x = torch.zeros(1, positions.shape[0], HEAD)
    cos, sin = rot(x, positions[None])
    return cos[0], sin[0]


CASES = [
    ({"rope_type": "default"}, None, MAX_POS),
    ({"rope_type": "linear", "factor": 4.0}, None, MAX_POS * 4),
    # transformers' dynamic NTK at sequence length max_pos*factor == the static cache
    ({"rope_type": "dynamic", "factor": 2.0}, None, MAX_POS * 2),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 128}, None, MAX_POS),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": MAX_POS},
     None, MAX_POS * 4),
]


@pytest.mark.parametrize("params,_,length", CASES, ids=[c[0]["rope_type"] for c in CASES])
def test_rope_cache_matches_transformers(params, _, length):
    scaling = None if params["rope_type"] == "default" else dict(params)
    rope = RotaryEmbedding(HEAD, HEAD, MAX_POS, THETA, scaling, max_len=length)
    positions = torch.arange(length)
    ref_cos, ref_sin = _hf_cos_sin(params, positions)
    cos, sin = rope.get_cos_sin(positions, torch.float32)
    torch.testing.assert_close(cos[:, 0], ref_cos[:, :HEAD // 2], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(sin[:, 0], ref_sin[:, :HEAD // 2], atol=2e-5, rtol=1e-5)


def test_apply_rotary_matches_transformers_and_arbitrary_positions():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    scaling = {"rope_type": "linear", "factor": 2.0}
    rope = RotaryEmbedding(HEAD, HEAD, MAX_POS, THETA, scaling)
    positions = torch.tensor([5, 0, 300, 17, 17, 511])  # arbitrary order, repeats
    T, H, KV = positions.shape[0], 3, 1
    q = torch.randn(T, H * HEAD)
    k = torch.randn(T, KV * HEAD)
    ref_cos, ref_sin = _hf_cos_sin(scaling, positions)
    q_ref, k_ref = apply_rotary_pos_emb(q.view(1, T, H, HEAD).transpose(1, 2),
                                        k.view(1, T, KV, HEAD).transpose(1, 2),
                                        ref_cos[None], ref_sin[None])
    q2, k2 = rope(positions, q.clone(), k.clone())
    torch.testing.assert_close(q2.view(T, H, HEAD), q_ref[0].transpose(0, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k2.view(T, KV, HEAD), k_ref[0].transpose(0, 1), atol=1e-5, rtol=1e-5)


def test_unknown_scaling_rejected():
    with pytest.raises(ValueError, match="not supported"):
        RotaryEmbedding(HEAD, HEAD, MAX_POS, THETA, {"rope_type": "weird", "factor": 2.0})


# ---------------------------------------------------------------------- longrope (Phi-3)
def _longrope_params(half: int, orig: int) -> dict:
    g = torch.Generator().manual_seed(3)
    return {"rope_type": "longrope", "original_max_position_embeddings": orig,
            "short_factor": (1 + torch.rand(half, generator=g)).tolist(),
            "long_factor": (1 + 8 * torch.rand(half, generator=g)).tolist()}


def _hf_longrope_cos_sin(params: dict, seq_len: int, positions: torch.Tensor):
    """transformers' longrope inv_freq/attention factor at `seq_len` (short factors up to
    original_max_position_embeddings, long beyond), as cos/sin of `positions`."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = LlamaConfig(hidden_size=HEAD * 4, num_attention_heads=4, head_dim=HEAD,
                      max_position_embeddings=MAX_POS,
                      rope_parameters={**params, "rope_theta": THETA})
    inv_freq, attn = ROPE_INIT_FUNCTIONS["longrope"](cfg, "cpu", seq_len=seq_len)
    freqs = torch.outer(positions.float(), inv_freq.float())
    return freqs.cos() * attn, freqs.sin() * attn


@pytest.mark.parametrize("kind", ["longrope", "su"])
def test_longrope_matches_transformers_per_position(kind):
    orig = 128
    params = _longrope_params(HEAD // 2, orig)
    rot = RotaryEmbedding(HEAD, HEAD, MAX_POS, THETA, {**params, "rope_type": kind})
    assert rot.cos_sin_cache.shape == (MAX_POS, HEAD)
    short = torch.arange(0, orig)
    long = torch.arange(orig, MAX_POS)
    for pos, seq_len in ((short, orig), (long, MAX_POS)):
        cos, sin = rot.get_cos_sin(pos, torch.float32)
        ref_cos, ref_sin = _hf_longrope_cos_sin(params, seq_len, pos)
        torch.testing.assert_close(cos[:, 0], ref_cos, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sin[:, 0], ref_sin, atol=1e-5, rtol=1e-5)
    # the attention factor is not 1 here (max_pos / orig = 4)
    assert not torch.allclose(rot.cos_sin_cache[0, : HEAD // 2], torch.ones(HEAD // 2))


def test_rope_scaling_errors_name_the_flag(tmp_path):
    from llmcore.config import EngineArgs
    from llmcore.model_loader import get_model, load_model_config
    from test_tiny_models import _make_hf

    _, folder = _make_hf(tmp_path, "llama")
    with pytest.raises(ValueError, match="--rope-scaling: RoPE scaling type 'weird' is not "
                                         "supported; supported types: linear, dynamic"):
        load_model_config(EngineArgs(model=folder, rope_scaling='{"type": "weird"}'), "cpu")
    with pytest.raises(ValueError, match="--rope-scaling: type 'longrope' needs short_factor"):
        load_model_config(EngineArgs(model=folder, rope_scaling='{"type": "su"}'), "cpu")
    with pytest.raises(ValueError, match="--rope-scaling: type 'linear' needs factor"):
        load_model_config(EngineArgs(model=folder, rope_scaling='{"type": "linear"}'), "cpu")
    half = 64 // 4 // 2
    def su(n):  # vLLM-era spelling: "type": "su", no rope_type
        d = {k: v for k, v in _longrope_params(n, 64).items() if k != "rope_type"}
        return {**d, "type": "su"}

    bad = su(half + 1)
    mc = load_model_config(EngineArgs(model=folder, rope_scaling=json.dumps(bad)), "cpu")
    with pytest.raises(ValueError, match="short_factor has 9 entries"):
        get_model(mc, "cpu")
    # a Phi-3 style --rope-scaling (type su) builds and runs
    good = su(half)
    mc = load_model_config(EngineArgs(model=folder, rope_scaling=json.dumps(good)), "cpu")
    assert mc.rope_scaling["rope_type"] == "su" and mc.max_model_len == 256
    model = get_model(mc, "cpu")
    assert model.rotary_emb.cos_sin_cache.shape == (256, 16)
    from paged_kv_helper import PagedRunner
    logits = PagedRunner(model, num_blocks=32, block_size=8).step([(0, list(range(3, 103)))])
    assert torch.isfinite(torch.stack(list(logits))).all()  # past orig (64): long factors
