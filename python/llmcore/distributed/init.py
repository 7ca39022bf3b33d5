"""Setting up torch.distributed for the tensor-parallel ranks of one host.

Every failure names the numbers involved (rank, world size, devices, address), so a bad
launch is told apart from a bad model."""

from __future__ import annotations

import datetime
import os
import socket
from typing import Optional

import torch
import torch.distributed as dist


def default_backend(device: torch.device) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def check_visible_devices(device: torch.device, world_size: int) -> None:
    """A ValueError when the ranks of a CUDA run outnumber the visible GPUs."""
    if torch.device(device).type != "cuda":
        return
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if world_size > n:
        raise ValueError(f"tensor x pipeline parallel size {world_size} needs {world_size} GPUs, "
                         f"but {n} are visible (CUDA_VISIBLE_DEVICES="
                         f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})")


def free_tcp_init_method(host: str = "127.0.0.1") -> str:
    """tcp://host:port with a port that was free a moment ago (rank 0 binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return f"tcp://{host}:{s.getsockname()[1]}"


def init_distributed(rank: int, world_size: int, init_method: str,
                     backend: Optional[str] = None, device: Optional[torch.device] = None,
                     timeout_s: float = 600.0, local_rank: Optional[int] = None) -> None:
    """Join the default process group as `rank` of `world_size`.

    backend None: nccl for a CUDA device, gloo otherwise. local_rank: the rank's GPU index
    on its host; None: `rank` (every rank on this host). Raises RuntimeError naming the
    rank, world size, backend and address when the group cannot be formed."""
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank!r}")
    device = torch.device(device if device is not None else "cpu")
    backend = backend or default_backend(device)
    if backend == "nccl":
        if local_rank is None:
            check_visible_devices(device, world_size)
        else:   # the ranks span hosts: this host needs this rank's GPU only
            check_visible_devices(device, local_rank + 1)
        # NVLink multicast (NVLS) stays off: it is unreliable on shared hosts.
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
        if not dist.is_nccl_available():
            raise RuntimeError(f"rank {rank} of {world_size}: this torch build has no NCCL")
    elif backend == "gloo" and not dist.is_gloo_available():
        raise RuntimeError(f"rank {rank} of {world_size}: this torch build has no gloo")
    if dist.is_initialized():
        if dist.get_world_size() != world_size or dist.get_rank() != rank:
            raise RuntimeError(f"torch.distributed is already initialized as rank "
                               f"{dist.get_rank()} of {dist.get_world_size()}, not {rank} of "
                               f"{world_size}")
        return
    kwargs = {}
    if backend == "nccl":
        index = rank if local_rank is None else local_rank
        kwargs["device_id"] = torch.device("cuda", index % max(1, torch.cuda.device_count()))
    try:
        dist.init_process_group(backend=backend, init_method=init_method, rank=rank,
                                world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    except Exception as e:
        raise RuntimeError(f"rank {rank} of {world_size}: torch.distributed {backend} init at "
                           f"{init_method} failed: {type(e).__name__}: {e}") from e
