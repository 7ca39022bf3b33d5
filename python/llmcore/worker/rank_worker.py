"""One rank's Worker in a process of its own: the start-up every executor that runs one
worker per process shares (mp's worker processes, Ray's actors), so a change to how a rank
is built (its process groups, its stage) lands in all of them at once."""

from __future__ import annotations

import os
from typing import Optional

from llmcore.config.engine_config import EngineConfig
from llmcore.model_runner.step_io import ModelRunnerOutput, StepInput
from llmcore.worker.worker import Worker


def create_rank_worker(config: EngineConfig, rank: int, world_size: int, init_method: str,
                       backend: str, eos_token_id: Optional[int],
                       local_rank: Optional[int] = None) -> Worker:
    """Join torch.distributed as `rank` of `world_size`, then build the rank's Worker, joined
    to its tensor- and pipeline-parallel groups; the executor loads its weights next
    (`load_model`, in --max-parallel-loading-workers waves). local_rank: the rank's device
    index on its host (default: rank)."""
    import torch

    from llmcore.distributed.init import init_distributed

    if config.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # the ranks share the host's cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    init_distributed(rank, world_size, init_method, backend, device=config.device,
                     local_rank=local_rank)
    worker = Worker(config, rank=rank, local_rank=rank if local_rank is None else local_rank,
                    eos_token_id=eos_token_id)
    worker.init_device()   # builds its groups collectively with every other rank
    return worker


def output_rank(config: EngineConfig) -> int:
    """The rank whose step output travels back to the engine: the first rank of the last
    pipeline stage (every tensor-parallel rank of it samples the same tokens, so one copy
    is enough)."""
    return config.parallel_config.output_rank


def run_step(worker: Worker, step: StepInput) -> Optional[ModelRunnerOutput]:
    """One step on this rank, waited for; its output on the output rank, None elsewhere."""
    out = worker.execute_model(step).get()
    return out if worker.rank == output_rank(worker.config) else None
