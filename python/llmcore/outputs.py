"""Request outputs (vLLM compatible names and fields)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union


@dataclass
class Logprob:
    """Log probability of one token at one position.

    rank: 1-based rank of the token in the distribution (1 = most likely).
    decoded_token: its text, filled in by the detokenizer if asked.
    """

    logprob: float
    rank: Optional[int] = None
    decoded_token: Optional[str] = None


# {token_id: Logprob} for one position. The sampled (or actual prompt) token is
# always present, plus the top-k tokens.
PositionLogprobs = Dict[int, Logprob]
# One dict per generated token.
SampleLogprobs = List[PositionLogprobs]
# One entry per prompt token; the first is None (no logprob for the first token).
PromptLogprobs = List[Optional[PositionLogprobs]]


def make_position_logprobs(token_id: int, logprob: float, rank: Optional[int],
                           topk_ids: Optional[Sequence[int]] = None,
                           topk_logprobs: Optional[Sequence[float]] = None,
                           num_logprobs: Optional[int] = None) -> PositionLogprobs:
    """Build the dict vLLM returns for one position: the chosen token first, then the
    top `num_logprobs` tokens (ranks 1..k). The chosen token keeps its own rank even
    when it is also in the top-k.  Pass python lists (``tensor.tolist()``)."""
    d: PositionLogprobs = {int(token_id): Logprob(float(logprob), None if rank is None else int(rank))}
    if topk_ids is not None and num_logprobs:
        k = min(num_logprobs, len(topk_ids))
        for r in range(k):
            tid = int(topk_ids[r])
            if tid not in d:
                d[tid] = Logprob(float(topk_logprobs[r]), r + 1)
    return d


@dataclass
class CompletionOutput:
    """One of the n outputs of a request."""

    index: int
    text: str
    token_ids: Sequence[int]
    cumulative_logprob: Optional[float]
    logprobs: Optional[SampleLogprobs]
    finish_reason: Optional[str] = None     # "stop" | "length" | "abort" | None
    stop_reason: Union[int, str, None] = None  # stop token id or stop string; None for EOS

    def finished(self) -> bool:
        return self.finish_reason is not None

    def __repr__(self) -> str:
        return (f"CompletionOutput(index={self.index}, text={self.text!r}, "
                f"token_ids={list(self.token_ids)}, cumulative_logprob={self.cumulative_logprob}, "
                f"logprobs={self.logprobs}, finish_reason={self.finish_reason}, "
                f"stop_reason={self.stop_reason})")


@dataclass
class RequestMetrics:
    """Timestamps (time.time()) of a request's life."""

    arrival_time: float
    first_scheduled_time: Optional[float] = None
    first_token_time: Optional[float] = None
    last_token_time: Optional[float] = None
    finished_time: Optional[float] = None
    time_in_queue: Optional[float] = None


@dataclass
class RequestOutput:
    """Snapshot of a request: cumulative text/token_ids of each of its outputs."""

    request_id: str
    prompt: Optional[str]
    prompt_token_ids: Optional[List[int]]
    prompt_logprobs: Optional[PromptLogprobs]
    outputs: List[CompletionOutput]
    finished: bool
    metrics: Optional[RequestMetrics] = None
    num_cached_tokens: Optional[int] = None

    def __repr__(self) -> str:
        return (f"RequestOutput(request_id={self.request_id}, prompt={self.prompt!r}, "
                f"prompt_token_ids={self.prompt_token_ids}, "
                f"prompt_logprobs={self.prompt_logprobs}, outputs={self.outputs}, "
                f"finished={self.finished}, metrics={self.metrics}, "
                f"num_cached_tokens={self.num_cached_tokens})")
