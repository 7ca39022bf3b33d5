"""Malformed GGUF files: truncated, byte-flipped, counts and lengths inflated.

Every reader of a GGUF (the structural check, the weight iterator, the chat-template
reader, the config reader through transformers) either reads the file or raises a
ValueError naming it - never another exception, never a hang, never an allocation
that the file's size does not justify.
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_seed import header_u64_offsets, seed_hf_config, write_seed_gguf  # noqa: E402

from llmcore.model_loader.gguf_check import GGUFFormatError, check_gguf_file  # noqa: E402
from llmcore.model_loader.model_config import _load_gguf_config  # noqa: E402
from llmcore.model_loader.weight_utils import iterate_gguf_weights  # noqa: E402
from llmcore.tokenizer.loader import read_gguf_chat_template  # noqa: E402

# Far above what the seed (2 KiB) needs, far below what an inflated count would take.
_PEAK_BYTES = 64 << 20
_HUGE = [2**31, 2**32, 2**40, 2**60, 2**63, 2**64 - 1]


@pytest.fixture(scope="module")
def seed() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "seed.gguf")
        write_seed_gguf(path)
        # Warm up (imports, transformers' lazy modules) outside the allocation tracing.
        list(iterate_gguf_weights(path, seed_hf_config()))
        _load_gguf_config(path)
        with open(path, "rb") as f:
            return f.read()


def _readers(path: str):
    yield lambda: check_gguf_file(path)
    yield lambda: list(iterate_gguf_weights(path, seed_hf_config()))
    yield lambda: read_gguf_chat_template(path)


def _exercise(data: bytes, with_transformers: bool = False) -> list[Exception]:
    """Run every reader on `data`; return the ValueErrors they raised (each names the file)."""
    errors = []
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "fuzzed.gguf")
        with open(path, "wb") as f:
            f.write(data)
        readers = list(_readers(path))
        if with_transformers:
            readers.append(lambda: _load_gguf_config(path))
        tracemalloc.start()
        try:
            for read in readers:
                try:
                    read()
                except ValueError as e:
                    assert path in str(e), f"error does not name the file: {e!r}"
                    errors.append(e)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < _PEAK_BYTES, f"reading a {len(data)}-byte file allocated {peak} bytes"
    return errors


def test_seed_reads_cleanly(seed):
    assert _exercise(seed, with_transformers=True) == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_truncated(seed, data):
    cut = data.draw(st.integers(0, len(seed) - 1))
    errors = _exercise(seed[:cut])
    # Every cut loses a part of the header or of a tensor, except inside the final padding
    # (less than the 32-byte alignment).
    if cut < len(seed) - 31:
        assert errors, f"truncation at {cut} of {len(seed)} bytes was not noticed"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_inflated_counts_and_lengths(seed, data):
    offsets = header_u64_offsets(seed)
    buf = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 3))):
        off = data.draw(st.sampled_from(offsets))
        value = data.draw(st.sampled_from(_HUGE) | st.integers(0, 2**64 - 1))
        struct.pack_into("<Q", buf, off, value)
    _exercise(bytes(buf))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_flipped_bytes(seed, data):
    buf = bytearray(seed)
    # Mostly in the header (metadata and tensor infos), where a flip changes structure.
    header_end = max(header_u64_offsets(seed)) + 8
    for _ in range(data.draw(st.integers(1, 8))):
        off = data.draw(st.integers(0, header_end - 1) | st.integers(0, len(buf) - 1))
        buf[off] ^= data.draw(st.integers(1, 255))
    _exercise(bytes(buf))


@settings(max_examples=40, deadline=None)
@given(tail=st.binary(max_size=256))
def test_random_bytes_after_the_magic(tail):
    _exercise(b"GGUF" + tail)
    _exercise(b"GGUF\x03\x00\x00\x00" + tail)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutations_through_transformers(seed, data):
    """transformers' GGUF config reader runs behind the same check."""
    buf = bytearray(seed)
    off = data.draw(st.sampled_from(header_u64_offsets(seed)))
    struct.pack_into("<Q", buf, off, data.draw(st.sampled_from(_HUGE)))
    _exercise(bytes(buf), with_transformers=True)


# ---------------------------------------------------------------------- regressions
def _metadata_array_file(item_type: int, count: int) -> bytes:
    """A header with one metadata array claiming `count` items and holding none."""
    key = b"k"
    return (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
            + struct.pack("<IIQ", 9, item_type, count))


@pytest.mark.parametrize("item_type", [0, 8, 9])  # uint8, string, array
def test_regression_huge_array_at_eof_is_refused(item_type):
    """gguf.GGUFReader looped 2^40 times over empty reads (and grew a list each time)."""
    with pytest.raises(GGUFFormatError, match="claims 1099511627776 items"):
        _check_bytes(_metadata_array_file(item_type, 2**40))


def test_regression_huge_tensor_count_is_refused():
    with pytest.raises(GGUFFormatError, match="claims 1099511627776 tensors"):
        _check_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**40, 0))


def test_regression_tensor_past_the_end_is_refused(seed):
    """The reader memory-mapped a tensor past the end as a short array, then failed in
    reshape with a message that named neither the file nor the tensor."""
    errors = _exercise(seed[:-64])
    assert any("runs past the end" in str(e) for e in errors)


def test_regression_non_utf8_key_names_the_file(seed):
    buf = bytearray(seed)
    buf[24 + 8] = 0xFF  # the first metadata key's first byte
    errors = _exercise(bytes(buf))
    assert errors and all(isinstance(e, GGUFFormatError) for e in errors)


def _check_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x.gguf")
        with open(path, "wb") as f:
            f.write(data)
        check_gguf_file(path)
