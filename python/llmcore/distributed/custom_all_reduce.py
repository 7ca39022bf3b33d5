"""Custom all-reduce for a tensor-parallel group whose ranks share one host.

Each rank allocates one buffer (a signal area for the cross-GPU barriers, then a staging
buffer of `max_bytes`), the ranks swap its CUDA IPC handles over a CPU (gloo) group at
start-up, and each all-reduce is one kernel that reads every peer's staging buffer directly over
NVLink / PCIe peer access (llmcore.ops.custom_all_reduce; the protocol is described in
cuda/kernels/custom_all_reduce.cu). Small and medium messages - decode steps' row-parallel
outputs - finish faster than through NCCL, in eager mode and inside CUDA graphs alike.

A call goes to NCCL instead when the tensor does not qualify (dtype, size, contiguity: see
tensor_unsupported_reason); the whole group never uses it when it is disabled
(--disable-custom-all-reduce), on CPUs, for world sizes other than 2/4/6/8, without the GPU
kernels, when a rank cannot reach a peer's GPU directly, or when the ranks span hosts. Every
rank reaches the same decision (the reasons are exchanged), because a rank in the custom kernel
and a rank in NCCL would wait for each other forever. NVLink multicast (NVLS) is not used.
"""

from __future__ import annotations

import logging
import socket
import weakref
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

SUPPORTED_WORLD_SIZES = (2, 4, 6, 8)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DEFAULT_MAX_BYTES = 8 << 20
DEFAULT_MAX_BLOCKS = 36     # blocks per launch: all ranks' blocks must run at once
ENABLED = "enabled"


def static_unavailable_reason(world_size: int, device: torch.device,
                              disabled: bool) -> Optional[str]:
    """Why a group of `world_size` ranks on `device` cannot use the custom all-reduce, from
    facts every rank shares (so ranks can decide it without talking); None: it may."""
    if disabled:
        return "disabled (--disable-custom-all-reduce)"
    if torch.device(device).type != "cuda":
        return f"the device is {torch.device(device)}, not a CUDA GPU"
    if world_size not in SUPPORTED_WORLD_SIZES:
        return (f"the tensor-parallel size {world_size} is not one of "
                f"{', '.join(map(str, SUPPORTED_WORLD_SIZES))}")
    return None


def tensor_unsupported_reason(t: torch.Tensor, device: torch.device,
                              max_bytes: int) -> Optional[str]:
    """Why this all-reduce goes to NCCL; None: the custom kernel takes it. Depends only on what
    every rank of a tensor-parallel step shares (dtype, shape, strides, device kind), never on
    addresses, so the ranks agree call by call (a misaligned tensor is copied instead)."""
    if t.dtype not in SUPPORTED_DTYPES:
        return f"dtype {t.dtype} (float32/float16/bfloat16 only)"
    if t.device != device:
        return f"tensor on {t.device}, the buffers on {device}"
    if not t.is_contiguous():
        return "not contiguous"
    nbytes = t.numel() * t.element_size()
    if nbytes > max_bytes:
        return f"{nbytes} bytes > {max_bytes}"
    if nbytes % 16:
        return f"{nbytes} bytes is not a multiple of 16"
    return None


def _first_reason(per_rank: Sequence[Optional[str]]) -> Optional[str]:
    for r, reason in enumerate(per_rank):
        if reason:
            return f"rank {r}: {reason}"
    return None


class CustomAllReduce:
    """One rank's side of a group's custom all-reduce. Built by setup_custom_all_reduce (which
    maps the peers' buffers); tests may build one from pointers they own (release=None).

    Every rank of the group must make the same sequence of all_reduce calls (as with NCCL), on
    one stream at a time, and all ranks' kernels must be able to run at once."""

    def __init__(self, rank: int, world_size: int, device: torch.device,
                 signals: Sequence[int], staging: Sequence[int], max_bytes: int,
                 max_blocks: int = DEFAULT_MAX_BLOCKS, algo: str = "auto",
                 release: Optional[tuple[int, list[int]]] = None):
        if world_size not in SUPPORTED_WORLD_SIZES:
            raise ValueError(f"world_size must be one of {SUPPORTED_WORLD_SIZES}, got {world_size}")
        if len(signals) != world_size or len(staging) != world_size:
            raise ValueError(f"need {world_size} signal and staging pointers, got "
                             f"{len(signals)} and {len(staging)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if max_bytes <= 0 or max_bytes % 16:
            raise ValueError(f"max_bytes must be a positive multiple of 16, got {max_bytes}")
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.signals = [int(p) for p in signals]
        self.staging = [int(p) for p in staging]
        self.max_bytes, self.max_blocks, self.algo = int(max_bytes), int(max_blocks), algo
        # the own allocation and the peers' mappings, released once (close() or collection)
        self._finalizer = (weakref.finalize(self, _release_buffers, release[0], list(release[1]))
                           if release is not None else None)

    def should_use(self, t: torch.Tensor) -> bool:
        return tensor_unsupported_reason(t, self.device, self.max_bytes) is None

    def all_reduce(self, t: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """out (new when None; may be t) = the sum of every rank's t. The caller checked
        should_use(t)."""
        from llmcore.ops.custom_all_reduce import custom_all_reduce

        if out is None:
            out = torch.empty_like(t)
        src = t if t.data_ptr() % 16 == 0 else t.clone()
        dst = out if out.data_ptr() % 16 == 0 else torch.empty_like(t)
        custom_all_reduce(src, dst, self.signals, self.staging, self.rank, self.max_bytes,
                          self.algo, self.max_blocks)
        if dst is not out:
            out.copy_(dst)
        return out

    def close(self) -> None:
        """Unmap the peers' buffers and free this rank's (no all-reduce may be in flight)."""
        if self._finalizer is not None:
            self._finalizer()


def _release_buffers(own: int, opened: list[int]) -> None:
    from llmcore.ops import custom_all_reduce as car

    for p in opened:
        try:
            car.ipc_close_handle(p)
        except RuntimeError:   # at interpreter exit the CUDA context may be gone already
            pass
    try:
        car.ipc_free(own)
    except RuntimeError:
        pass


def _all_gather(cpu_group, obj: Any, world_size: int) -> list:
    out: list = [None] * world_size
    dist.all_gather_object(out, obj, group=cpu_group)
    return out


def _local_facts(index: int) -> dict:
    import llmcore.ops as ops

    facts = {"host": socket.gethostname(), "bus_id": None, "sms": 0, "reason": None}
    if not ops.cuda_available():
        facts["reason"] = "the llmcore GPU kernels are not available"
        return facts
    from llmcore.ops import custom_all_reduce as car
    try:
        facts["bus_id"] = car.pci_bus_id(index)
        facts["sms"] = torch.cuda.get_device_properties(index).multi_processor_count
    except RuntimeError as e:
        facts["reason"] = f"GPU {index}: {e}"
    return facts


def _peer_access_reason(index: int, facts: list[dict], rank: int) -> Optional[str]:
    from llmcore.ops import custom_all_reduce as car

    if len({f["host"] for f in facts}) > 1:
        return "the ranks span hosts"
    for r, f in enumerate(facts):
        if r == rank:
            continue
        peer = car.device_of_pci_bus_id(f["bus_id"])
        if peer < 0:
            return f"rank {r}'s GPU {f['bus_id']} is not visible here (CUDA_VISIBLE_DEVICES)"
        if not car.can_access_peer(index, peer):
            return f"GPU {index} has no peer access to GPU {peer} ({f['bus_id']})"
    return None


def setup_custom_all_reduce(cpu_group, device: torch.device, *, disabled: bool = False,
                            max_bytes: int = DEFAULT_MAX_BYTES
                            ) -> tuple[Optional[CustomAllReduce], str]:
    """-> (the rank's CustomAllReduce, "enabled") or (None, why not). Collective over the ranks
    of `cpu_group` (a gloo group of the tensor-parallel ranks) unless a shared fact already
    rules it out; every rank gets the same answer."""
    if max_bytes <= 0 or max_bytes % 16:
        raise ValueError(f"max_bytes must be a positive multiple of 16, got {max_bytes}")
    world, rank = dist.get_world_size(cpu_group), dist.get_rank(cpu_group)
    device = torch.device(device)
    reason = static_unavailable_reason(world, device, disabled)
    if reason is not None:
        return None, reason
    index = device.index if device.index is not None else torch.cuda.current_device()
    device = torch.device("cuda", index)
    # 1: what each rank runs on
    facts = _all_gather(cpu_group, _local_facts(index), world)
    reason = _first_reason([f["reason"] for f in facts])
    own, handle = None, None
    if reason is None:
        local = _peer_access_reason(index, facts, rank)
        if local is None:
            from llmcore.ops import custom_all_reduce as car
            try:
                own = car.ipc_malloc(index, car.signal_bytes() + max_bytes)
                handle = car.ipc_get_handle(own)
            except RuntimeError as e:
                local = f"allocating the {max_bytes}-byte buffer failed: {e}"
        # 2: every rank's handle, or why it has none
        got = _all_gather(cpu_group, (local, handle), world)
        reason = _first_reason([g[0] for g in got])
    if reason is not None:
        if own is not None:
            _release_buffers(own, [])
        return None, reason
    from llmcore.ops import custom_all_reduce as car
    ptrs, opened, local = [], [], None
    for r, (_, h) in enumerate(got):
        if r == rank:
            ptrs.append(own)
            continue
        try:
            p = car.ipc_open_handle(index, h)
        except RuntimeError as e:
            local = f"mapping rank {r}'s buffer failed: {e}"
            break
        opened.append(p)
        ptrs.append(p)
    # 3: did every rank map every buffer?
    reason = _first_reason(_all_gather(cpu_group, local, world))
    if reason is not None:
        _release_buffers(own, opened)
        return None, reason
    sig = car.signal_bytes()
    max_blocks = min(DEFAULT_MAX_BLOCKS, car.MAX_BLOCKS, min(f["sms"] for f in facts))
    return CustomAllReduce(rank, world, device, signals=ptrs, staging=[p + sig for p in ptrs],
                           max_bytes=max_bytes, max_blocks=max_blocks,
                           release=(own, opened)), ENABLED
