"""Torch-facing wrapper of the custom all-reduce kernel and of its CUDA IPC buffer helpers.

The kernel (cuda/kernels/custom_all_reduce.cu) sums one tensor per rank by reading the other
ranks' staging buffers directly; this module checks arguments and passes raw pointers.
:mod:`llmcore.distributed.custom_all_reduce` owns the buffers, exchanges their IPC handles and
decides per call between this kernel and NCCL. :func:`llmcore.ops.reference.all_reduce_sum` is
the torch-native reference.
"""

from __future__ import annotations

from typing import Sequence

import torch

from llmcore.ops import _C, _DTYPE_CODE, _stream

ALGOS = {"auto": 0, "one_shot": 1, "two_shot": 2}
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SUPPORTED_WORLD_SIZES = (2, 4, 6, 8)
MAX_BLOCKS = 64   # == kArMaxBlocks (the signal area has one flag row per block)


def signal_bytes() -> int:
    """Bytes of one rank's signal area (a staging buffer may follow it in one allocation)."""
    return int(_C().AR_SIGNAL_BYTES)


def counter_offset() -> int:
    """Byte offset of the per-block launch counters (uint32) inside a signal area."""
    return int(_C().AR_COUNTER_OFFSET)


def choose_algo(nbytes: int, world_size: int) -> str:
    """The algorithm "auto" picks for a message of nbytes."""
    return {1: "one_shot", 2: "two_shot"}[int(_C().ar_choose_algo(int(nbytes), int(world_size)))]


def grid_blocks(nbytes: int, world_size: int, algo: str, max_blocks: int) -> int:
    """Blocks a launch uses (the counters of blocks [0, grid) advance by one per launch)."""
    return int(_C().ar_grid_blocks(int(nbytes), int(world_size), ALGOS[algo], int(max_blocks)))


def custom_all_reduce(inp: torch.Tensor, out: torch.Tensor, signals: Sequence[int],
                      staging: Sequence[int], rank: int, staging_bytes: int,
                      algo: str = "auto", max_blocks: int = 36) -> torch.Tensor:
    """out = the sum over the ranks of their `inp`, on the current stream.

    signals / staging: every rank's signal area and staging buffer (device pointers valid in
    this process, rank order). inp and out: contiguous, same dtype (float32/float16/bfloat16)
    and size, a multiple of 16 bytes and at most staging_bytes, 16-byte aligned, on this rank's
    GPU. out may be inp; inp may start at this rank's staging buffer (no copy; its contents are
    clobbered) or must lie outside it; out may not overlap it.
    Every rank must make the same sequence of calls with the same sizes, algo and max_blocks."""
    for t, name in ((inp, "inp"), (out, "out")):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"custom_all_reduce: {name} must be a torch.Tensor")
        if t.device.type != "cuda":
            raise ValueError(f"custom_all_reduce: {name} must be on a CUDA device, got {t.device}")
        if not t.is_contiguous():
            raise ValueError(f"custom_all_reduce: {name} must be contiguous")
        if t.data_ptr() % 16:
            raise ValueError(f"custom_all_reduce: {name} must be 16-byte aligned")
    if inp.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"custom_all_reduce: dtype must be float32/float16/bfloat16, "
                        f"got {inp.dtype}")
    if out.dtype != inp.dtype or out.numel() != inp.numel() or out.device != inp.device:
        raise ValueError(f"custom_all_reduce: out ({out.dtype}, {out.numel()} elements, "
                         f"{out.device}) must match inp ({inp.dtype}, {inp.numel()} elements, "
                         f"{inp.device})")
    world = len(signals)
    if world not in SUPPORTED_WORLD_SIZES or len(staging) != world:
        raise ValueError(f"custom_all_reduce: {world} signal and {len(staging)} staging pointers; "
                         f"the world size must be one of {SUPPORTED_WORLD_SIZES}")
    if not 0 <= rank < world:
        raise ValueError(f"custom_all_reduce: rank must be in [0, {world}), got {rank}")
    nbytes = inp.numel() * inp.element_size()
    if nbytes % 16:
        raise ValueError(f"custom_all_reduce: {nbytes} bytes is not a multiple of 16")
    if nbytes > staging_bytes:
        raise ValueError(f"custom_all_reduce: {nbytes} bytes exceed the {staging_bytes}-byte "
                         "staging buffer")
    if algo not in ALGOS:
        raise ValueError(f"custom_all_reduce: algo must be one of {list(ALGOS)}, got {algo!r}")
    if not 1 <= max_blocks <= MAX_BLOCKS:
        raise ValueError(f"custom_all_reduce: max_blocks must be in [1, {MAX_BLOCKS}], "
                         f"got {max_blocks}")
    mine, o, i = int(staging[rank]), out.data_ptr(), inp.data_ptr()
    if nbytes and o < mine + staging_bytes and mine < o + nbytes:
        raise ValueError("custom_all_reduce: out overlaps this rank's staging buffer, which the "
                         "other ranks read until the end of the all-reduce")
    if nbytes and i != mine and i < mine + staging_bytes and mine < i + nbytes:
        raise ValueError("custom_all_reduce: inp must start at this rank's staging buffer "
                         "(registered-buffer mode) or not overlap it")
    _C().custom_all_reduce(o, i, inp.numel(), _DTYPE_CODE[inp.dtype],
                           [int(p) for p in signals], [int(p) for p in staging], int(rank),
                           int(staging_bytes), ALGOS[algo], int(max_blocks), _stream(inp))
    return out


# ------------------------------------------------------------------ IPC buffers and devices
def ipc_malloc(device_index: int, nbytes: int) -> int:
    """A zeroed device allocation of nbytes (outside torch's caching allocator, so its IPC
    handle maps exactly this allocation)."""
    return int(_C().ipc_malloc(int(device_index), int(nbytes)))


def ipc_free(ptr: int) -> None:
    _C().ipc_free(int(ptr))


def ipc_get_handle(ptr: int) -> bytes:
    """The CUDA IPC handle (64 bytes) of an ipc_malloc allocation."""
    return bytes(_C().ipc_get_handle(int(ptr)))


def ipc_open_handle(device_index: int, handle: bytes) -> int:
    """This process's pointer to another process's allocation (peer access enabled lazily)."""
    return int(_C().ipc_open_handle(int(device_index), bytes(handle)))


def ipc_close_handle(ptr: int) -> None:
    _C().ipc_close_handle(int(ptr))


def pci_bus_id(device_index: int) -> str:
    return str(_C().device_pci_bus_id(int(device_index)))


def device_of_pci_bus_id(bus_id: str) -> int:
    """The device index of a PCI bus id in this process, -1 when it is not visible here."""
    return int(_C().device_by_pci_bus_id(str(bus_id)))


def can_access_peer(device_index: int, peer_index: int) -> bool:
    """Whether device_index can read peer_index's memory directly (True for the same device)."""
    return bool(_C().can_access_peer(int(device_index), int(peer_index)))
