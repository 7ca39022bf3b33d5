"""Safetensors checkpoints under fuzzing: bad header lengths (up to 2^64-1), bad JSON,
dtype/shape/offset mismatches, truncation, and garbage weight indexes. The weight
iterator yields tensors or raises a ValueError naming the file."""

from __future__ import annotations

import json
import os
import struct
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmcore.model_loader.weight_utils import iterate_hf_weights


def _seed() -> bytes:
    from safetensors.torch import save

    return save({"model.embed_tokens.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
                 "model.norm.weight": torch.ones(4, dtype=torch.float16)},
                metadata={"format": "pt"})


SEED = _seed()
_N = struct.unpack_from("<Q", SEED)[0]
HEADER = json.loads(SEED[8:8 + _N])
BODY = SEED[8 + _N:]


def _read(data: bytes, index: str | None = None) -> tuple[str, list, Exception | None]:
    d = tempfile.mkdtemp(prefix="llmcore-st-fuzz-")
    path = os.path.join(d, "model.safetensors")
    with open(path, "wb") as f:
        f.write(data)
    if index is not None:
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            f.write(index)
    try:
        return path, list(iterate_hf_weights(d, "safetensors")), None
    except ValueError as e:
        return path, [], e


def _assert_clean(path: str, tensors: list, err) -> None:
    if err is not None:
        assert os.path.dirname(path) in str(err), f"error does not name the file: {err}"
    for name, t in tensors:
        assert isinstance(name, str) and isinstance(t, torch.Tensor)


def _with_header(header: dict, body: bytes = BODY) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def test_seed_reads():
    path, tensors, err = _read(SEED)
    assert err is None and [n for n, _ in tensors] == sorted(HEADER.keys() - {"__metadata__"})


@settings(max_examples=60, deadline=None)
@given(length=st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 7, _N - 1, _N + 1, 2**60]))
def test_header_length(length):
    data = struct.pack("<Q", length) + SEED[8:]
    _assert_clean(*_read(data))


@settings(max_examples=40, deadline=None)
@given(cut=st.integers(0, len(SEED) - 1))
def test_truncated(cut):
    path, tensors, err = _read(SEED[:cut])
    _assert_clean(path, tensors, err)
    assert err is not None, f"a file cut at {cut} of {len(SEED)} bytes was read"


_dims = st.integers(-2, 2**63) | st.integers(0, 8)
_entry_changes = st.fixed_dictionaries({}, optional={
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "Q4", "", "f32"])
    | st.integers() | st.none(),
    "shape": st.lists(_dims, max_size=5) | st.text(max_size=3) | st.none(),
    "data_offsets": st.lists(st.integers(-1, 2**64), max_size=3) | st.none() | st.text(max_size=3),
})


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(HEADER.keys() - {"__metadata__"})), changes=_entry_changes,
       extra=st.dictionaries(st.text(max_size=6), st.integers() | st.text(max_size=4), max_size=2))
def test_mismatched_entries(name, changes, extra):
    header = json.loads(json.dumps(HEADER))
    header[name].update(changes)
    header.update(extra)
    _assert_clean(*_read(_with_header(header)))


@settings(max_examples=40, deadline=None)
@given(raw=st.binary(max_size=120) | st.text(max_size=120).map(str.encode))
def test_garbage_header(raw):
    _assert_clean(*_read(struct.pack("<Q", len(raw)) + raw + BODY))


@settings(max_examples=40, deadline=None)
@given(index=st.text(max_size=80) | st.builds(
    lambda wm: json.dumps({"weight_map": wm}),
    st.dictionaries(st.text(max_size=8), st.sampled_from(
        ["model.safetensors", "../model.safetensors", "/etc/passwd", "missing.safetensors", ""])
        | st.integers() | st.none(), max_size=3) | st.lists(st.integers(), max_size=2)))
def test_garbage_index(index):
    _assert_clean(*_read(SEED, index=index))


# ---------------------------------------------------------------------- regressions
def test_regression_huge_header_length_names_the_file():
    """safetensors' own SafetensorError (not a ValueError, no file name) escaped."""
    path, _, err = _read(struct.pack("<Q", 2**60) + SEED[8:])
    assert isinstance(err, ValueError) and path in str(err)


@pytest.mark.parametrize("shard", ["../model.safetensors", "/etc/passwd"])
def test_regression_index_cannot_point_outside_the_folder(shard):
    """The index's file names were joined to the folder unchecked (../, absolute paths)."""
    _, _, err = _read(SEED, index=json.dumps({"weight_map": {"w": shard}}))
    assert err is not None and "is not a file in" in str(err)


def test_regression_index_without_weight_map_names_the_index():
    """A KeyError escaped from json.load(f)["weight_map"]."""
    _, _, err = _read(SEED, index="{}")
    assert err is not None and "model.safetensors.index.json" in str(err)
