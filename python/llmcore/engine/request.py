"""Per-request and per-sequence state the Python side keeps beside the C++ scheduler.

The scheduler owns tokens and blocks; these objects own what only Python needs:
sampling parameters, detokenizer state, logprobs, finish reasons and timings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

from llmcore.outputs import RequestMetrics


@dataclass
class SeqState:
    seq_id: int
    index: int                         # output index within the request (0..best_of-1)
    slot: int = -1                     # row in the sampling batch state; -1 = none yet
    output_token_ids: list = field(default_factory=list)
    cumulative_logprob: float = 0.0
    logprobs: Optional[list] = None    # list[dict[int, Logprob]] when requested
    detokenizer: Any = None
    text: str = ""
    finish_reason: Optional[str] = None
    stop_reason: Any = None
    finished: bool = False
    # text already released to streams (held back while it may start a stop string)
    emitted_text_len: int = 0
    # pipelined engine: the scheduler already released it (it reached a length limit)
    sched_released: bool = False


@dataclass
class RequestState:
    request_id: str
    internal_id: int
    prompt: Optional[str]
    prompt_token_ids: list
    params: Any                        # SamplingParams; None for a pooling request
    max_tokens: int                    # resolved: never None (0 for a pooling request)
    arrival_time: float
    seqs: list = field(default_factory=list)      # live and finished SeqStates, by index
    pending_fork: bool = False         # n/best_of > 1: children are forked at the first sample
    is_beam: bool = False              # runs above the core (engine/beam_driver.py)
    prompt_logprobs: Optional[list] = None
    prompt_logprobs_done: bool = True
    finished: bool = False
    aborted: bool = False
    metrics: RequestMetrics = None
    num_cached_tokens: int = 0
    stream_outputs: bool = True        # False: only the final output is built (offline LLM)
    # a sample ended on a stop string, which only the front end sees: the core must be told
    frontend_stopped: bool = False
    pooling_params: Any = None         # PoolingParams of an embedding request

    def __post_init__(self):
        if self.metrics is None:
            self.metrics = RequestMetrics(arrival_time=self.arrival_time, first_scheduled_time=None,
                                          first_token_time=None, last_token_time=self.arrival_time,
                                          finished_time=None)

    @property
    def num_seqs_total(self) -> int:
        p = self.params
        if p is None:
            return 1                   # pooling: nothing sampled
        return p.best_of if p.best_of is not None else p.n

    def live_seqs(self) -> list:
        return [s for s in self.seqs if not s.finished]

    def mark_token_time(self) -> None:
        now = time.time()
        if self.metrics.first_token_time is None:
            self.metrics.first_token_time = now
        self.metrics.last_token_time = now
