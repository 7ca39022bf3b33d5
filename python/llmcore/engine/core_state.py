"""What the engine core keeps per request and per sequence beside the C++ scheduler (which
owns tokens and blocks), and the per-step collection of outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from llmcore.engine.core_types import EngineCoreOutput, PositionLogprobs


@dataclass(eq=False)   # hashed by identity: OutputBatch keys outputs by sequence
class CoreSeq:
    seq_id: int
    index: int                         # sample index within the request (0..best_of-1)
    output_token_ids: list = field(default_factory=list)
    finished: bool = False
    # pipelined step: the scheduler already released it (it reached a length limit)
    sched_released: bool = False
    matcher: Any = None                # GrammarMatcher under guided decoding, else None


@dataclass
class CoreRequest:
    request_id: str
    internal_id: int
    prompt_token_ids: list
    params: Any                        # SamplingParams
    max_tokens: int
    seqs: list = field(default_factory=list)
    pending_fork: bool = False         # n/best_of > 1: children are forked at the first sample
    prompt_logprobs_done: bool = True
    # prompt positions below this have had their logprobs sent (a preemption by recompute
    # restarts the prefill from position 0; those positions are not sent again)
    prompt_logprobs_next: int = 0
    finished: bool = False
    grammar: Any = None                # GrammarHandle under guided decoding, else None
    arrival_time: float = 0.0
    priority: int = 0
    pooling: Any = None                # an embedding request's PoolerConfig (params is None)

    @property
    def num_seqs_total(self) -> int:
        p = self.params
        if p is None:
            return 1                   # a pooling request: one sequence, nothing sampled
        return p.best_of if p.best_of is not None else p.n


class OutputBatch:
    """One step's EngineCoreOutputs, one per sample; a sample
    that got two tokens in one call (the async step's tail and a synchronous step) gets one
    output with both."""

    __slots__ = ("_by_key",)

    def __init__(self):
        self._by_key: dict = {}

    def token(self, req: CoreRequest, seq: CoreSeq, tok: int, lp: float, top: Optional[tuple],
              row: int, finish_reason: Optional[str], stop_reason: Optional[int]) -> None:
        # keyed by the sequence object: cheaper than (request id, index) per token
        out = self._by_key.get(seq)
        if out is None:
            out = self._by_key[seq] = EngineCoreOutput(req.request_id, seq.index, [], [])
        out.new_token_ids.append(tok)
        out.new_token_logprobs.append(lp)
        if top is not None and req.params.logprobs is not None:
            ids, lps, ranks = top
            pl = out.new_logprobs
            if pl is None:
                pl = out.new_logprobs = PositionLogprobs([], [], [], [], [])
            pl.token_ids.append(tok)
            pl.logprobs.append(lp)
            pl.ranks.append(ranks[row])
            pl.topk_ids.append(ids[row])
            pl.topk_logprobs.append(lps[row])
        if finish_reason is not None:
            out.finish_reason = finish_reason
            out.stop_reason = stop_reason

    def prompt_logprobs(self, job, res, seq: CoreSeq) -> None:
        """seq: the request's sample 0 (prompt logprobs ride on its output)."""
        lps, top_ids, top_lps, ranks = res
        out = self._by_key.get(seq)
        if out is None:
            out = self._by_key[seq] = EngineCoreOutput(job.request_id, 0, [], [])
        out.prompt_logprobs = PositionLogprobs(list(job.targets), lps, ranks, top_ids, top_lps)
        out.prompt_logprobs_start = job.first + 1

    def error(self, request_id: str, message: str) -> None:
        """The core failed this request (e.g. its grammar did not compile)."""
        self._by_key[(request_id, "error")] = EngineCoreOutput(
            request_id, 0, [], [], finish_reason="error", error=message)

    def pooled(self, req: CoreRequest, data: bytes) -> None:
        """A pooling request's vector: its only output, which finishes it."""
        self._by_key[(req.request_id, 0)] = EngineCoreOutput(req.request_id, 0, [], [],
                                                             finish_reason="stop", pooled=data)

    def finish(self) -> list:
        return list(self._by_key.values())
