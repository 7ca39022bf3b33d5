"""The tensor- and pipeline-parallel groups of one rank, built explicitly (no globals).

Rank layout: rank = pp_rank * tp_size + tp_rank, so the ranks of one stage are contiguous
(one host's neighbouring GPUs share the all-reduce traffic) and a pipeline group is
{tp_rank, tp + tp_rank, 2 tp + tp_rank, ...}.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from llmcore.distributed.custom_all_reduce import (DEFAULT_MAX_BYTES, setup_custom_all_reduce,
                                                   static_unavailable_reason)
from llmcore.distributed.group import TorchDistributedGroup
from llmcore.distributed.pipeline import PipelineGroup

logger = logging.getLogger(__name__)


def rank_coords(rank: int, tp_size: int, pp_size: int) -> tuple[int, int]:
    """-> (tp_rank, pp_rank) of a global rank."""
    if not 0 <= rank < tp_size * pp_size:
        raise ValueError(f"rank {rank} is outside tensor x pipeline size "
                         f"{tp_size} x {pp_size}")
    return rank % tp_size, rank // tp_size


@dataclass
class ParallelGroups:
    tp_group: TorchDistributedGroup
    pp_group: PipelineGroup
    tp_rank: int
    pp_rank: int


def build_parallel_groups(tp_size: int, pp_size: int, device: Optional[torch.device] = None,
                          disable_custom_all_reduce: bool = False,
                          custom_all_reduce_max_bytes: int = DEFAULT_MAX_BYTES) -> ParallelGroups:
    """Every rank of the default group must call this (new_group is collective).

    On CUDA devices the tensor-parallel group also gets the custom all-reduce (over a gloo
    group of the same ranks, for the IPC handle exchange) unless disable_custom_all_reduce or
    it is unavailable; CPU ranks (device None or cpu) keep torch.distributed alone."""
    if not dist.is_initialized():
        raise RuntimeError("build_parallel_groups needs torch.distributed initialized first "
                           "(llmcore.distributed.init_distributed)")
    world, rank = dist.get_world_size(), dist.get_rank()
    if world != tp_size * pp_size:
        raise RuntimeError(f"torch.distributed has {world} ranks, but tensor x pipeline size "
                           f"is {tp_size} x {pp_size} = {tp_size * pp_size}")
    tp_rank, pp_rank = rank_coords(rank, tp_size, pp_size)
    device = torch.device(device if device is not None else "cpu")
    # the same on every rank (config facts), so every rank creates the same groups
    custom_reason = static_unavailable_reason(tp_size, device, disable_custom_all_reduce)
    tp_group = pp_group = tp_cpu_group = None
    # every rank creates every group, in the same order
    for p in range(pp_size):
        ranks = [p * tp_size + t for t in range(tp_size)]
        g = _new_group(ranks, "tensor-parallel", rank, world)
        cpu_g = (_new_group(ranks, "tensor-parallel gloo", rank, world, backend="gloo")
                 if custom_reason is None else None)
        if p == pp_rank:
            tp_group, tp_cpu_group = g, cpu_g
    for t in range(tp_size):
        ranks = [p * tp_size + t for p in range(pp_size)]
        g = _new_group(ranks, "pipeline", rank, world)
        if t == tp_rank:
            pp_group = PipelineGroup(g, ranks, rank)
    custom = None
    if tp_cpu_group is not None:   # collective within the tensor-parallel group
        custom, custom_reason = setup_custom_all_reduce(
            tp_cpu_group, device, max_bytes=custom_all_reduce_max_bytes)
    if tp_size > 1:
        logger.info("rank %d: custom all-reduce for the tensor-parallel group: %s", rank,
                    custom_reason or "enabled")
    return ParallelGroups(TorchDistributedGroup(tp_group, custom_all_reduce=custom), pp_group,
                          tp_rank, pp_rank)


def _new_group(ranks: list[int], what: str, rank: int, world: int,
               backend: Optional[str] = None):
    try:
        return dist.new_group(ranks, backend=backend)
    except Exception as e:  # noqa: BLE001 - named with the numbers, like init_distributed
        raise RuntimeError(f"rank {rank} of {world}: creating the {what} group of ranks "
                           f"{ranks} ({dist.get_backend()}) failed: {type(e).__name__}: "
                           f"{e}") from e
