"""A ParallelGroup (llmcore.layers.context) over a torch.distributed process group."""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


class TorchDistributedGroup:
    """Collectives of the tensor-parallel layers over `group` (None: the default group).

    all_reduce works in place; all_gather returns a new tensor, the ranks' parts
    concatenated along `dim` in rank order. With a `custom_all_reduce`
    (llmcore.distributed.custom_all_reduce.CustomAllReduce, GPU ranks of one host) the
    all-reduces it accepts run through it, the others through torch.distributed (NCCL)."""

    def __init__(self, group: Optional[dist.ProcessGroup] = None, custom_all_reduce=None):
        if not dist.is_initialized():
            raise RuntimeError("TorchDistributedGroup needs torch.distributed initialized first "
                               "(llmcore.distributed.init_distributed)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.custom_all_reduce = custom_all_reduce

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        car = self.custom_all_reduce
        if car is not None and car.should_use(tensor):
            return car.all_reduce(tensor, out=tensor)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        return tensor

    def all_gather(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        dim = dim % tensor.dim()
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor, group=self.group)
        return torch.cat(parts, dim=dim)

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        dist.broadcast(tensor, src=src, group=self.group)
        return tensor

    def barrier(self) -> None:
        dist.barrier(group=self.group)
