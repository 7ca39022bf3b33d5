"""The messages between a front end and the engine core, as msgspec Structs.

They are the whole contract of the engine-core boundary: the front end sends token ids
and sampling parameters, the core answers once per step with the new token ids (and
logprobs) of every request it advanced; an embedding model's requests are answered
once, with their pooled vector. In-process they are passed as objects; across
processes they travel msgpack-encoded (`msgspec.msgpack`, typed decoders) over ZeroMQ —
never pickled, so a peer can only ever make the other side build these types.

Text never crosses this boundary: tokenization, detokenization and stop strings belong
to the front end (a stop string found there aborts the request in the core).
"""

from __future__ import annotations

import enum
from typing import Optional

import msgspec

from llmcore.pooling_params import PoolingParams
from llmcore.sampling_params import SamplingParams


class EngineCoreRequest(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """A validated, tokenized request (InputProcessor's output): it generates
    (sampling_params) or, on an embedding model, is pooled (pooling_params; then
    sampling_params is None and max_tokens 0)."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: Optional[SamplingParams]
    max_tokens: int                    # resolved by the front end: never None
    arrival_time: float
    priority: int = 0
    pooling_params: Optional[PoolingParams] = None


class PositionLogprobs(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """Logprobs of consecutive positions, column-wise (one entry per position)."""

    token_ids: list[int]               # the sampled (or actual prompt) token at each position
    logprobs: list[float]
    ranks: Optional[list[int]] = None  # 1-based ranks of token_ids; with top-k only
    topk_ids: Optional[list[list[int]]] = None
    topk_logprobs: Optional[list[list[float]]] = None


class EngineCoreOutput(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """What one step did for one sample of one request."""

    request_id: str
    index: int = 0                      # which of the request's n / best_of samples
    new_token_ids: list[int] = []
    # logprob of each new token (always: cumulative logprobs rank best_of samples)
    new_token_logprobs: list[float] = []
    new_logprobs: Optional[PositionLogprobs] = None      # top-k, when the request asked
    # prompt logprobs of positions [prompt_logprobs_start, +len): one chunk per prefill step
    prompt_logprobs: Optional[PositionLogprobs] = None
    prompt_logprobs_start: int = 0
    finish_reason: Optional[str] = None  # "stop" | "length" | "abort" | "error"
    stop_reason: Optional[int] = None    # the stop token id; None for EOS / length
    num_cached_tokens: int = 0
    error: Optional[str] = None          # with finish_reason "error": why the core refused it
    # a pooling request's vector: float32, little-endian, hidden_size values (compact:
    # 4 bytes a value where a msgpack float list takes 9)
    pooled: Optional[bytes] = None


class SchedulerStats(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """Engine-side state for metrics and the stats line, sent with each step's outputs."""

    num_running: int = 0
    num_waiting: int = 0
    num_swapped: int = 0
    kv_cache_usage: float = 0.0
    num_total_blocks: int = 0
    num_free_blocks: int = 0
    prefix_cache_hit_rate: float = 0.0
    num_preemptions_total: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0


class EngineCoreOutputs(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """One step's outputs, batched: one message per step, not one per request."""

    outputs: list[EngineCoreOutput] = []
    stats: Optional[SchedulerStats] = None
    timestamp: float = 0.0


class EngineCoreRequestType(enum.Enum):
    """First frame of a front end -> core message; the second is the msgpack payload."""

    ADD = b"\x00"        # payload: EngineCoreRequest
    ABORT = b"\x01"      # payload: list[str] (request ids)
    UTILITY = b"\x02"    # payload: UtilityRequest
    SHUTDOWN = b"\x03"   # payload: empty; drain and exit


class UtilityRequest(msgspec.Struct, array_like=True, gc=False):
    """A call of a named core method (e.g. "get_stats", "reset_prefix_cache")."""

    call_id: int
    method: str
    args: list = []


class UtilityResult(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    call_id: int
    result: Optional[msgspec.Raw] = None
    error: Optional[str] = None
