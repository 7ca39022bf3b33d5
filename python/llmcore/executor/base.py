"""The executor interface: how the engine core reaches its workers.

`UniProcExecutor` drives one in-process worker; `MultiprocExecutor` one worker process per
tensor-parallel rank, started and stopped by the engine; `RayExecutor` one Ray actor per rank,
on one host or several. All implement the same calls; the engine core cannot tell them apart.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Iterable, NoReturn, Optional

from llmcore.config.engine_config import EngineConfig
from llmcore.model_runner.step_io import PendingRunnerOutput, StepInput


class WorkerFailure(RuntimeError):
    """A worker of a multi-process executor died or raised; the executor cannot go on."""


@dataclass(frozen=True)
class RankReply:
    """One rank's answer to a call: its value, or the executor's message for its failure."""

    rank: int
    value: Any = None
    error: Optional[str] = None   # set: the call failed on this rank (died or raised)
    fatal: bool = False           # with error: fail now, without waiting for other ranks


def gather_replies(ranks: list[int],
                   next_replies: Callable[[set[int], bool], Iterable[RankReply]],
                   fail: Callable[[str], NoReturn], fail_fast: bool) -> list:
    """One answer from every rank of `ranks`, in that order, or `fail(message)` (which
    raises) once a rank died or raised.

    next_replies(waiting, block) yields replies of ranks in `waiting` (a live view: a rank
    leaves it as soon as its reply is taken, before the next is asked for): at least one
    when `block`, else only those already there. A `fatal` reply fails at once. Otherwise
    failures are reported for the lowest failed rank: with `fail_fast`, as soon as one is
    seen, among the ranks that have answered by then (the others may wait forever in a
    collective for the failed one); without, once every rank has answered."""
    waiting = set(ranks)
    results: dict = {}
    errors: dict = {}

    def take(replies: Iterable[RankReply]) -> int:
        n = 0
        for reply in replies:
            n += 1
            waiting.discard(reply.rank)
            if reply.error is None:
                results[reply.rank] = reply.value
                continue
            if reply.fatal:
                fail(reply.error)
            errors[reply.rank] = reply.error
        return n

    while waiting:
        taken = take(next_replies(waiting, True))
        if errors and fail_fast:
            while waiting and taken:   # the answers already there, without waiting
                taken = take(next_replies(waiting, False))
            fail(errors[min(errors)])
    if errors:
        fail(errors[min(errors)])
    return [results[rank] for rank in ranks]


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
