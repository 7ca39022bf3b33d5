"""A bounded structural check of a GGUF file, run before any GGUF parser sees it.

`gguf.GGUFReader` (and transformers' GGUF loading, built on it) trusts the counts and
lengths in the file: a truncated file or one claiming 2^40 metadata entries or array
items makes it loop for hours and grow lists without bound, since reads past the end
of the memory map return empty arrays instead of failing. `check_gguf_file` walks the
header once, comparing every count, length and tensor extent with the file size, so a
malformed file is refused with a GGUFFormatError naming it, in time linear in the
header's size. `open_gguf` is the checked way to get a GGUFReader.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Any

_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_MAX_DIMS = 4               # GGML_MAX_DIMS
_MAX_ARRAY_NESTING = 4      # arrays of arrays: real files use none
_DEFAULT_ALIGNMENT = 32

# GGUFValueType -> fixed size in bytes (STRING=8 and ARRAY=9 are variable).
_SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
# The fewest bytes one value of a type can take, for count-vs-size bounds.
_MIN_SIZE = {**_SCALAR_SIZE, _STRING: 8, _ARRAY: 12}
_MIN_KV = 8 + 4 + 1          # key length, value type, smallest value
_MIN_TENSOR_INFO = 8 + 4 + 4 + 8  # name length, n_dims, type, offset


class GGUFFormatError(ValueError):
    """The file is not a well-formed GGUF file (the message names the file)."""


class _Cursor:
    def __init__(self, buf: Any, path: str, little: bool):
        self.buf, self.path, self.pos = buf, path, 0
        self.size = len(buf)
        self.order = "<" if little else ">"

    def fail(self, what: str) -> GGUFFormatError:
        return GGUFFormatError(f"{self.path}: not a valid GGUF file: {what} (at byte {self.pos})")

    def remaining(self) -> int:
        return self.size - self.pos

    def take(self, n: int, what: str) -> int:
        if n > self.remaining():
            raise self.fail(f"{what} runs past the end of the file ({self.size} bytes)")
        start = self.pos
        self.pos += n
        return start

    def unpack(self, fmt: str, what: str) -> Any:
        start = self.take(struct.calcsize(fmt), what)
        return struct.unpack_from(self.order + fmt, self.buf, start)[0]

    def string(self, what: str, decode: bool) -> str:
        n = self.unpack("Q", f"{what} length")
        start = self.take(n, what)
        if not decode:
            return ""
        try:
            return bytes(self.buf[start:start + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None


def _skip_value(cur: _Cursor, vtype: int, what: str, depth: int = 0) -> Any:
    """Skip one value of type vtype; return it when it is a scalar (None otherwise)."""
    if vtype in _SCALAR_SIZE:
        fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}[_SCALAR_SIZE[vtype]]
        return cur.unpack(fmt, what)
    if vtype == _STRING:
        cur.string(what, decode=False)
        return None
    if vtype != _ARRAY:
        raise cur.fail(f"{what} has unknown value type {vtype}")
    if depth >= _MAX_ARRAY_NESTING:
        raise cur.fail(f"{what} nests arrays more than {_MAX_ARRAY_NESTING} deep")
    itype = cur.unpack("I", f"{what} item type")
    count = cur.unpack("Q", f"{what} length")
    if itype not in _MIN_SIZE:
        raise cur.fail(f"{what} has unknown item type {itype}")
    if count * _MIN_SIZE[itype] > cur.remaining():
        raise cur.fail(f"{what} claims {count} items, more than the file can hold")
    if itype in _SCALAR_SIZE:
        cur.take(count * _SCALAR_SIZE[itype], what)
    elif itype == _STRING:  # the common big case (vocabularies): a tight loop
        for _ in range(count):
            cur.take(cur.unpack("Q", f"{what} item length"), f"{what} item")
    else:
        for i in range(count):
            _skip_value(cur, itype, f"{what}[{i}]", depth + 1)
    return None


def check_gguf_buffer(buf: Any, path: str) -> None:
    """Check the GGUF header in `buf` (bytes-like). Raises GGUFFormatError naming `path`."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if len(buf) < 24 or bytes(buf[:4]) != _MAGIC:
        raise GGUFFormatError(f"{path}: not a GGUF file (no GGUF magic, or shorter than its "
                              "header)")
    (version,) = struct.unpack_from("<I", buf, 4)
    little = version & 0xFFFF != 0  # a big-endian file reads as 0x000N0000 here
    cur = _Cursor(buf, path, little)
    cur.pos = 4
    version = cur.unpack("I", "version")
    if version not in _VERSIONS:
        raise cur.fail(f"version {version} is not supported (only {_VERSIONS})")
    n_tensors = cur.unpack("Q", "tensor count")
    n_kv = cur.unpack("Q", "metadata count")
    if n_kv * _MIN_KV > cur.remaining():
        raise cur.fail(f"claims {n_kv} metadata entries, more than the file can hold")
    if n_tensors * _MIN_TENSOR_INFO > cur.remaining():
        raise cur.fail(f"claims {n_tensors} tensors, more than the file can hold")

    keys: set[str] = set()
    alignment = _DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        key = cur.string("metadata key", decode=True)
        if key in keys:
            raise cur.fail(f"metadata key {key!r} appears twice")
        keys.add(key)
        vtype = cur.unpack("I", f"type of {key!r}")
        value = _skip_value(cur, vtype, f"metadata {key!r}")
        if key == "general.alignment":
            if vtype != _UINT32 or value == 0 or value & (value - 1):
                raise cur.fail("general.alignment must be a uint32 power of two")
            alignment = value

    tensors = []
    names: set[str] = set()
    for _ in range(n_tensors):
        name = cur.string("tensor name", decode=True)
        if name in names:
            raise cur.fail(f"tensor {name!r} appears twice")
        names.add(name)
        n_dims = cur.unpack("I", f"tensor {name!r} rank")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise cur.fail(f"tensor {name!r} has rank {n_dims} (must be 1..{_MAX_DIMS})")
        dims = [cur.unpack("Q", f"tensor {name!r} shape") for _ in range(n_dims)]
        raw_type = cur.unpack("I", f"tensor {name!r} type")
        offset = cur.unpack("Q", f"tensor {name!r} offset")
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(raw_type)]
        except (ValueError, KeyError):
            raise cur.fail(f"tensor {name!r} has unknown type {raw_type}") from None
        if dims[0] % block:
            raise cur.fail(f"tensor {name!r}: row length {dims[0]} is not a multiple of its "
                           f"type's block size {block}")
        n_elems = 1
        for d in dims:
            n_elems *= d
        tensors.append((name, offset, n_elems // block * type_size))

    data_start = cur.pos + (-cur.pos) % alignment
    for name, offset, nbytes in tensors:
        if data_start + offset + nbytes > cur.size:
            raise GGUFFormatError(f"{path}: not a valid GGUF file: tensor {name!r} "
                                  f"({nbytes} bytes at data offset {offset}) runs past the end "
                                  f"of the file ({cur.size} bytes)")


def check_gguf_file(path: str) -> None:
    """Check that `path` is a well-formed GGUF file; raises GGUFFormatError naming it."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise GGUFFormatError(f"{path}: not a GGUF file (empty)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                check_gguf_buffer(buf, path)
    except OSError as e:
        raise GGUFFormatError(f"{path}: cannot read the GGUF file: {e}") from None


def open_gguf(path: str) -> Any:
    """A gguf.GGUFReader of `path` after check_gguf_file; any reader error becomes a
    GGUFFormatError naming the file."""
    import gguf

    check_gguf_file(path)
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # noqa: BLE001 - the reader raises ValueError/KeyError/IndexError...
        raise GGUFFormatError(f"{path}: not a valid GGUF file: {type(e).__name__}: {e}") from None
