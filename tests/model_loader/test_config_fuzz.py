"""config.json under fuzzing: missing and wrong-typed keys, huge numbers, wrong
architectures, garbage bytes. load_model_config either resolves sane sizes or raises a
ValueError naming the config file."""

from __future__ import annotations

import json
import math
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmcore.config import EngineArgs
from llmcore.model_loader.model_config import load_model_config

BASE = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 16,
        "intermediate_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1,
        "num_hidden_layers": 1, "vocab_size": 32, "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "eos_token_id": 2, "bos_token_id": 1}
KEYS = sorted(BASE) + ["head_dim", "sliding_window", "rope_scaling", "use_sliding_window",
                       "tie_word_embeddings", "layer_types", "torch_dtype"]

_numbers = (st.integers(-2**70, 2**70) | st.sampled_from([0, 1, -1, 2**31, 2**63, 10**30])
            | st.floats(allow_nan=True, allow_infinity=True))
_scalars = st.none() | st.booleans() | _numbers | st.text(max_size=12) | st.sampled_from(
    ["LlamaForCausalLM", "Qwen2ForCausalLM", "llama", "qwen2", "float16", "linear", "yarn"])
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.sampled_from(["type", "rope_type", "factor",
                                                          "original_max_position_embeddings",
                                                          "rope_theta"]) | st.text(max_size=5),
                                         inner, max_size=4), max_leaves=8)


def _load(config_text: str):
    d = tempfile.mkdtemp(prefix="llmcore-cfg-fuzz-")
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write(config_text)
    try:
        return d, load_model_config(EngineArgs(model=d), "cpu"), None
    except ValueError as e:
        assert d in str(e), f"error does not name the config: {e}"
        return d, None, e


def _assert_sane(mc) -> None:
    for v in (mc.hidden_size, mc.num_heads, mc.num_kv_heads, mc.num_layers, mc.vocab_size,
              mc.head_dim, mc.max_model_len):
        assert isinstance(v, int) and 1 <= v <= 1 << 36
    assert mc.num_heads % mc.num_kv_heads == 0
    assert math.isfinite(mc.rope_theta) and mc.rope_theta > 0
    assert mc.sliding_window is None or mc.sliding_window >= 0


def test_base_config_loads():
    _, mc, err = _load(json.dumps(BASE))
    assert err is None
    _assert_sane(mc)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.dictionaries(st.sampled_from(KEYS), _values, min_size=1, max_size=4),
       drop=st.lists(st.sampled_from(sorted(BASE)), max_size=3))
def test_mutated_config(changes, drop):
    cfg = {k: v for k, v in BASE.items() if k not in drop}
    cfg.update(changes)
    _, mc, _ = _load(json.dumps(cfg))  # NaN / Infinity stay: Python's json writes them
    if mc is not None:
        _assert_sane(mc)


@settings(max_examples=30, deadline=None)
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_garbage_config_bytes(raw):
    d = tempfile.mkdtemp(prefix="llmcore-cfg-fuzz-")
    with open(os.path.join(d, "config.json"), "wb") as f:
        f.write(raw)
    with pytest.raises(ValueError, match="config"):
        load_model_config(EngineArgs(model=d), "cpu")


# ---------------------------------------------------------------------- regressions
@pytest.mark.parametrize("key,value,match", [
    ("num_hidden_layers", 10**12, "num_hidden_layers must be in"),
    ("vocab_size", 2**40, "vocab_size must be in"),
    ("max_position_embeddings", 10**30, "max_position_embeddings must be an integer"),
    ("architectures", "LlamaForCausalLM", "architectures must be a list"),
    ("architectures", [["LlamaForCausalLM"]], "architectures must be a list"),
    ("sliding_window", "wide", "sliding_window must be"),
    ("rope_scaling", {"rope_type": "linear", "factor": 1e9}, "factor must be <="),
    # hypothesis found this one: the type check named the config's rope_scaling, not the file
    ("rope_scaling", {"type": None, "factor": 2.0}, "RoPE scaling type None is not supported"),
    ("rope_scaling", {"rope_type": "warp", "factor": 2.0}, "type 'warp' is not supported"),
])
def test_regression_config_is_refused_naming_the_field(key, value, match):
    """These loaded (or failed later with an unhashable-type TypeError, or sized the rotary
    cache and the model from absurd numbers) before check_hf_config."""
    d, mc, err = _load(json.dumps({**BASE, key: value}))
    assert mc is None and match in str(err)
    assert os.path.join(d, "config.json") in str(err)


def test_regression_null_rope_theta_uses_the_default():
    """rope_theta: null reached float(None) (TypeError) in get_rope_params."""
    _, mc, err = _load(json.dumps({**BASE, "rope_theta": None}))
    assert err is None and mc.rope_theta == 10000.0
