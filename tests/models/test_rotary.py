"""RoPE scaling variants vs transformers' LlamaRotaryEmbedding."""

from __future__ import annotations

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
