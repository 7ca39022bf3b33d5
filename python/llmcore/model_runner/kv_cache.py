"""Paged KV cache tensors: the device pool the scheduler's block ids index, and the
CPU swap pool. Per layer one K and one V tensor of [num_blocks, block_size, kv_heads, head_dim].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

GiB = 1 << 30


@dataclass(frozen=True)
class KVCacheSpec:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype

    @property
    def bytes_per_block(self) -> int:
        elem = torch.tensor([], dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * elem

    def blocks_for_bytes(self, nbytes: float) -> int:
        return int(nbytes // self.bytes_per_block)


def _bytes_view(t: torch.Tensor) -> torch.Tensor:
    # fp8 blocks move as bytes (index_select / index_copy_ need not support float8)
    return t.view(torch.uint8) if t.element_size() == 1 and t.is_floating_point() else t


class KVCache:
    """Owns the device pool and the swap pool; executes the scheduler's copy lists."""

    def __init__(self, spec: KVCacheSpec, num_device_blocks: int, num_cpu_blocks: int,
                 device: torch.device):
        self.spec = spec
        self.device = device
        shape = (num_device_blocks, spec.block_size, spec.num_kv_heads, spec.head_dim)
        # zeros, not empty: padded positions of a gathered block may be read (and masked);
        # masked garbage could still be NaN and poison 0 * NaN.
        self.device_caches = [(torch.zeros(shape, dtype=spec.dtype, device=device),
                               torch.zeros(shape, dtype=spec.dtype, device=device))
                              for _ in range(spec.num_layers)]
        self.cpu_caches = []
        if num_cpu_blocks > 0:
            cpu_shape = (num_cpu_blocks,) + shape[1:]
            pin = device.type == "cuda"
            self.cpu_caches = [(torch.zeros(cpu_shape, dtype=spec.dtype, pin_memory=pin),
                                torch.zeros(cpu_shape, dtype=spec.dtype, pin_memory=pin))
                               for _ in range(spec.num_layers)]

    def swap_out(self, pairs: np.ndarray) -> None:
        """pairs: int64 [k, 2] of (device_block, cpu_block)."""
        if len(pairs) == 0:
            return
        src = torch.from_numpy(np.ascontiguousarray(pairs[:, 0])).to(self.device)
        dst = torch.from_numpy(np.ascontiguousarray(pairs[:, 1]))
        for (dk, dv), (ck, cv) in zip(self.device_caches, self.cpu_caches):
            dk, dv, ck, cv = map(_bytes_view, (dk, dv, ck, cv))
            ck.index_copy_(0, dst, dk.index_select(0, src).to("cpu"))
            cv.index_copy_(0, dst, dv.index_select(0, src).to("cpu"))

    def swap_in(self, pairs: np.ndarray) -> None:
        """pairs: int64 [k, 2] of (cpu_block, device_block)."""
        if len(pairs) == 0:
            return
        src = torch.from_numpy(np.ascontiguousarray(pairs[:, 0]))
        dst = torch.from_numpy(np.ascontiguousarray(pairs[:, 1])).to(self.device)
        for (dk, dv), (ck, cv) in zip(self.device_caches, self.cpu_caches):
            dk, dv, ck, cv = map(_bytes_view, (dk, dv, ck, cv))
            dk.index_copy_(0, dst, ck.index_select(0, src).to(self.device, non_blocking=True))
            dv.index_copy_(0, dst, cv.index_select(0, src).to(self.device, non_blocking=True))

    def copy_blocks(self, pairs: np.ndarray) -> None:
        """Copy-on-write: pairs int64 [k, 2] of (src_block, dst_block) in the device pool."""
        if len(pairs) == 0:
            return
        src = torch.from_numpy(np.ascontiguousarray(pairs[:, 0])).to(self.device)
        dst = torch.from_numpy(np.ascontiguousarray(pairs[:, 1])).to(self.device)
        for k, v in self.device_caches:
            k, v = _bytes_view(k), _bytes_view(v)
            k.index_copy_(0, dst, k.index_select(0, src))
            v.index_copy_(0, dst, v.index_select(0, src))
