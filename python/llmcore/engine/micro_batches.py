"""Launched steps and the queue of micro-batches in flight (pipeline parallelism).

A synchronous engine step is two halves (engine/core.py): `_prepare_step` schedules, builds
the StepInput and launches it, returning a `LaunchedStep`; `_complete_step` waits for its
output and turns it into tokens and scheduler updates. With one pipeline stage the second
half follows the first at once.

With --pipeline-parallel-size M the engine keeps up to M launched steps in flight
("micro-batches", vLLM's virtual engines), so that while stage s runs micro-batch k, stage
s-1 already runs micro-batch k+1. Each holds a disjoint set of sequences: the scheduler
marks what it schedules in flight and skips it until `clear_in_flight`. Every rank runs
its steps in launch order and the executors answer them in that order (the mp executor's
pipes, Ray's per-actor call order), so micro-batches complete oldest first: a FIFO.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np


@dataclass(eq=False)
class LaunchedStep:
    """What completing a launched step needs besides its output."""

    pending: Any                       # PendingRunnerOutput: get() waits for the output
    normal: list                       # (CoreRequest, CoreSeq) of each sampled row
    prompt_logprob_jobs: list = field(default_factory=list)
    pooling_jobs: list = field(default_factory=list)
    # micro-batches only (None otherwise): the sequences it holds in flight (the plan's and
    # the forks made at launch), and the request of each prompt-logprob job (by identity:
    # an aborted request's id may be reused by the time the output comes)
    in_flight_seq_ids: Optional[np.ndarray] = None
    job_requests: Optional[list] = None


class MicroBatchQueue:
    """At most `size` launched steps, completed oldest first."""

    def __init__(self, size: int):
        if size < 2:
            raise ValueError(f"a micro-batch queue needs room for >= 2 steps, got {size}")
        self.size = size
        self._steps: collections.deque = collections.deque()

    def __len__(self) -> int:
        return len(self._steps)

    @property
    def full(self) -> bool:
        return len(self._steps) >= self.size

    def push(self, step: LaunchedStep) -> None:
        if self.full:
            raise RuntimeError(f"{self.size} micro-batches are in flight already")
        self._steps.append(step)

    def pop_oldest(self) -> LaunchedStep:
        return self._steps.popleft()
