"""Checkpoint tensors read lazily, one shard at a time.

`LazyTensor` wraps a safetensors slice (`safe_open(...).get_slice(name)`): its shape comes
from the file header and nothing is read until a torch op needs the values. `narrow` and
`split` only narrow the window, so a tensor-parallel weight loader that does
`loaded.narrow(0, rank * n, n)` and copies it reads its rows (or columns) and never
materialises the full tensor; a pipeline stage that skips another stage's tensors reads
nothing of them. Any other use (a torch function taking it, a tensor method) reads the
window then and behaves as that tensor.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch

_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
              "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
              "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
              "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


class LazyTensor:
    """`source`: an object with get_shape(), get_dtype() and numpy-style slicing that
    returns a torch tensor (a safetensors PySafeSlice)."""

    def __init__(self, source: Any, window: Optional[Sequence[tuple[int, int]]] = None,
                 what: str = "checkpoint tensor"):
        self._source = source
        self._what = what    # named by a read error (file and tensor)
        full = [int(x) for x in source.get_shape()]
        self._window = list(window) if window is not None else [(0, n) for n in full]

    @property
    def shape(self) -> torch.Size:
        return torch.Size(n for _, n in self._window)

    def size(self, dim: Optional[int] = None):
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return len(self._window)

    @property
    def ndim(self) -> int:
        return len(self._window)

    @property
    def dtype(self) -> torch.dtype:
        name = self._source.get_dtype()
        if name not in _ST_DTYPES:
            return self.materialize().dtype
        return _ST_DTYPES[name]

    def numel(self) -> int:
        return self.shape.numel()

    def narrow(self, dim: int, start: int, length: int) -> "LazyTensor":
        dim = dim % self.dim()
        off, n = self._window[dim]
        if start < 0 or length < 0 or start + length > n:
            raise IndexError(f"narrow({dim}, {start}, {length}) is outside a dimension of "
                             f"size {n}")
        window = list(self._window)
        window[dim] = (off + start, length)
        return LazyTensor(self._source, window, self._what)

    def split(self, split_size: Union[int, list], dim: int = 0) -> list["LazyTensor"]:
        n = self.shape[dim]
        sizes = ([split_size] * (-(-n // split_size)) if isinstance(split_size, int)
                 else list(split_size))
        if isinstance(split_size, int):
            sizes[-1] = n - split_size * (len(sizes) - 1)
        if sum(sizes) != n:
            raise RuntimeError(f"split sizes {sizes} do not add up to {n}")
        out, start = [], 0
        for s in sizes:
            out.append(self.narrow(dim, start, s))
            start += s
        return out

    def materialize(self) -> torch.Tensor:
        """Read the window (and only it) from the checkpoint."""
        try:
            if not self._window:
                return self._source[...]
            return self._source[tuple(slice(o, o + n) for o, n in self._window)]
        except Exception as e:  # noqa: BLE001 - the reader's errors name no file
            raise ValueError(f"{self._what}: cannot be read: {type(e).__name__}: {e}") from None

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.materialize(), name)

    def __repr__(self) -> str:
        return f"LazyTensor(shape={tuple(self.shape)}, window={self._window})"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return func(*_materialized(args), **_materialized(kwargs or {}))


def _materialized(x):
    if isinstance(x, LazyTensor):
        return x.materialize()
    if isinstance(x, (list, tuple)):
        return type(x)(_materialized(v) for v in x)
    if isinstance(x, dict):
        return {k: _materialized(v) for k, v in x.items()}
    return x
