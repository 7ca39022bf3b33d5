"""Tokenizer files under fuzzing: garbage tokenizer.json / tokenizer_config.json.
load_tokenizer returns a tokenizer or raises a ValueError naming the folder."""

from __future__ import annotations

import json
import os
import tempfile
import types

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmcore.tokenizer.loader import load_tokenizer

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.sampled_from(["model", "type", "vocab", "merges",
                                                       "added_tokens", "tokenizer_class",
                                                       "chat_template", "eos_token"])
                                       | st.text(max_size=6), inner, max_size=4), max_leaves=12)
_file = st.binary(max_size=100) | _json.map(lambda v: json.dumps(v).encode())


def _load(files: dict) -> None:
    d = tempfile.mkdtemp(prefix="llmcore-tok-fuzz-")
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    mc = types.SimpleNamespace(tokenizer=d, model_path=d, tokenizer_mode="auto")
    try:
        load_tokenizer(mc)
    except ValueError as e:
        assert d in str(e), f"error does not name the folder: {e}"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tokenizer_json=st.none() | _file, config=st.none() | _file)
def test_garbage_tokenizer_files(tokenizer_json, config):
    files = {}
    if tokenizer_json is not None:
        files["tokenizer.json"] = tokenizer_json
    if config is not None:
        files["tokenizer_config.json"] = config
    _load(files)


def test_regression_transformers_value_error_names_the_folder():
    """transformers' own ValueErrors were re-raised as they were, naming no file."""
    _load({"tokenizer_config.json": b'{"tokenizer_class": "NoSuchTokenizer"}'})
