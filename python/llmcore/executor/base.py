"""The executor interface: how the engine core reaches its workers.

`UniProcExecutor` drives one in-process worker; `MultiprocExecutor` one worker process per
tensor-parallel rank, started and stopped by the engine; `RayExecutor` one Ray actor per rank,
on one host or several. All implement the same calls; the engine core cannot tell them apart.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Optional

from llmcore.config.engine_config import EngineConfig
from llmcore.model_runner.step_io import PendingRunnerOutput, StepInput


class WorkerFailure(RuntimeError):
    """A worker of a multi-process executor died or raised; the executor cannot go on."""


def loading_waves(world_size: int, max_parallel: Optional[int]) -> list[list[int]]:
    """--max-parallel-loading-workers: the ranks in groups of at most max_parallel, each
    group loading its weights only after the previous one finished (None: all at once)."""
    n = world_size if max_parallel is None else max(1, min(max_parallel, world_size))
    return [list(range(i, min(i + n, world_size))) for i in range(0, world_size, n)]


class Executor(ABC):
    def __init__(self, config: EngineConfig, eos_token_id: Optional[int] = None):
        self.config = config
        self.eos_token_id = eos_token_id
        self._init_executor()

    @staticmethod
    def get_class(config: EngineConfig) -> type["Executor"]:
        pc = config.parallel_config
        backend = pc.distributed_executor_backend
        if backend == "ray":
            from llmcore.executor.ray_executor import RayExecutor
            return RayExecutor
        if pc.world_size == 1 and backend in (None, "uni", "mp"):
            from llmcore.executor.uniproc import UniProcExecutor
            return UniProcExecutor
        if backend in (None, "mp"):
            from llmcore.executor.multiproc import MultiprocExecutor
            return MultiprocExecutor
        raise ValueError(f"--distributed-executor-backend {backend!r} with tensor x pipeline size "
                         f"{config.parallel_config.world_size} is not supported yet")

    @abstractmethod
    def _init_executor(self) -> None:
        """Start the workers, load the model on each."""

    @abstractmethod
    def collective_rpc(self, method: str, args: tuple = (), kwargs: Optional[dict] = None
                       ) -> list[Any]:
        """Call `method` on every worker; their results in rank order."""

    def determine_num_blocks(self) -> tuple[int, int]:
        """The engine takes the minimum over workers: every rank must hold every block."""
        results = self.collective_rpc("determine_num_blocks")
        return min(r[0] for r in results), min(r[1] for r in results)

    def initialize_cache(self, num_device_blocks: int, num_cpu_blocks: int) -> None:
        self.collective_rpc("initialize_cache", (num_device_blocks, num_cpu_blocks))

    # Whether execute_model takes StepInput.defer_sampling (then sample_deferred follows):
    # guided requests keep async scheduling only with executors that do.
    supports_deferred_sampling = False

    @abstractmethod
    def execute_model(self, step: StepInput) -> PendingRunnerOutput:
        """Launch one step; the output of the rank that samples."""

    def sample_deferred(self, grammar_bitmask, grammar_rows) -> PendingRunnerOutput:
        """Sample the step launched with defer_sampling, under this grammar mask."""
        raise NotImplementedError(f"{type(self).__name__} does not defer sampling")

    def shutdown(self) -> None:
        self.collective_rpc("shutdown")
