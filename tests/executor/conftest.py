"""Fixtures of the executor tests: a tiny random Llama with 4 attention heads and 2 KV heads
(tensor-parallel sizes 1, 2 and 4 all divide it), fp32 for the CPU's gloo ranks."""

from __future__ import annotations

import pytest
import torch

TINY_LLAMA_CONFIG = dict(vocab_size=256, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, rms_norm_eps=1e-6,
                         tie_word_embeddings=False)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    import transformers as tf

    cfg = tf.LlamaConfig(**TINY_LLAMA_CONFIG)
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    out = str(tmp_path_factory.mktemp("tiny_llama_tp"))
    model.save_pretrained(out)
    return out
