"""What flows into and out of a runner each step: plain typed objects, one way.

engine core --StepInput--> executor -> worker -> ModelRunner --ModelRunnerOutput--> engine core

The C++ scheduler's plan (`_core.SchedulerOutput`, flat arrays) says what runs; StepInput
adds what only the engine core knows: which sequences the runner sees for the first time
(their sampling parameters, for the runner's persistent sampling state), which are gone,
and what to compute from the logits (samples, beam candidates, prompt logprobs).
The runner answers with host values only — token ids and logprobs, never logits.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from llmcore.sampling_params import SamplingParams


@dataclass
class NewSeq:
    """A sequence entering the runner's sampling state (a new request, a fork)."""

    seq_id: int
    params: SamplingParams
    prompt_token_ids: list
    output_token_ids: list


@dataclass
class PromptLogprobJob:
    """Prompt logprobs of positions first+1 .. last of one request, from rows start.."""

    request_id: str
    first: int                      # position p's logits predict prompt token p+1
    last: int
    row_start: int                  # index into the step's tokens
    targets: list                   # prompt tokens first+1 .. last
    k: int


@dataclass
class PoolingJob:
    """One prefill chunk of a pooling request: its rows [row_start, row_start + num_tokens)
    hold prompt positions [first_pos, first_pos + num_tokens). With `last` the prompt ends
    in this chunk and the runner returns the pooled vector."""

    seq_id: int
    row_start: int
    num_tokens: int
    first_pos: int
    last: bool
    pooling_type: str               # PoolerConfig.pooling_type
    normalize: bool


# The plan fields a runner reads. The runner takes a `_core.SchedulerOutput` or a
# PlanArrays alike (same attribute names).
PLAN_ARRAY_FIELDS = ("seq_ids", "num_tokens", "context_lens", "seq_lens", "do_sample",
                     "query_start_loc", "input_ids", "positions", "slot_mapping", "block_tables",
                     "blocks_to_swap_in", "blocks_to_swap_out", "blocks_to_copy")


@dataclass
class PlanArrays:
    """A picklable copy of the runner's view of a `_core.SchedulerOutput` (whose arrays are
    views into C++ memory): what a worker in another process needs of the plan."""

    num_seqs: int
    num_prefill_seqs: int
    num_batched_tokens: int
    seq_ids: np.ndarray
    num_tokens: np.ndarray
    context_lens: np.ndarray
    seq_lens: np.ndarray
    do_sample: np.ndarray
    query_start_loc: np.ndarray
    input_ids: np.ndarray
    positions: np.ndarray
    slot_mapping: np.ndarray
    block_tables: np.ndarray
    blocks_to_swap_in: np.ndarray
    blocks_to_swap_out: np.ndarray
    blocks_to_copy: np.ndarray

    @classmethod
    def from_plan(cls, plan: Any) -> "PlanArrays":
        if isinstance(plan, PlanArrays):
            return plan
        return cls(num_seqs=int(plan.num_seqs), num_prefill_seqs=int(plan.num_prefill_seqs),
                   num_batched_tokens=int(plan.num_batched_tokens),
                   **{f: np.array(getattr(plan, f)) for f in PLAN_ARRAY_FIELDS})


@dataclass
class StepInput:
    plan: Any                                    # llmcore._core.SchedulerOutput or PlanArrays
    sample_seq_ids: list = field(default_factory=list)   # sampled sequences, row order
    sample_rows: Optional[np.ndarray] = None     # token index of each sampled row
    sample_seq_lens: Optional[np.ndarray] = None  # its sequence's length after this step
    prompt_logprob_jobs: list = field(default_factory=list)
    pooling_jobs: list = field(default_factory=list)         # PoolingJob
    new_seqs: list = field(default_factory=list)             # NewSeq
    finished_seq_ids: list = field(default_factory=list)
    # async scheduling: the last token of a continuing sequence is a placeholder whose
    # value is the previous step's sample, still on the device
    use_device_tokens: bool = False
    # guided decoding: int32 [n, ceil(V/32)] bitmask (bit t of row i allows token t) for
    # the sampled rows grammar_rows (indices into sample_seq_ids)
    grammar_bitmask: Optional[np.ndarray] = None
    grammar_rows: Optional[np.ndarray] = None
    # async scheduling with guided rows: run the forward now, sample when the engine sends
    # the mask (runner.sample_deferred), which depends on the previous step's tokens
    defer_sampling: bool = False

    def portable(self) -> "StepInput":
        """This step with its plan as PlanArrays: picklable, for workers in other processes."""
        return dataclasses.replace(self, plan=PlanArrays.from_plan(self.plan))


@dataclass
class ModelRunnerOutput:
    """Host values of one step, row-aligned with StepInput's lists."""

    sampled_token_ids: list = field(default_factory=list)
    logprobs: Optional[list] = None              # of each sampled token
    topk: Optional[tuple] = None                 # (ids [rows][k], logprobs, ranks [rows])
    prompt_logprobs: list = field(default_factory=list)  # per job: (lps, top ids, top lps, ranks)
    # float32 [jobs whose prompt ended this step, hidden_size], in pooling_jobs' order
    pooled: Optional[np.ndarray] = None


def _to_host(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    # Into pinned memory with copy_(non_blocking=True): asynchronous. (t.to("cpu",
    # non_blocking=True) lands in pageable memory and synchronizes the stream.)
    if t is None or t.device.type != "cuda":
        return t
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    return host


def _tolist(t: Optional[torch.Tensor]):
    return None if t is None else t.tolist()


class PendingRunnerOutput:
    """A launched step whose results are still being copied to the host.

    The engine core reads it one step later with async scheduling (the device runs the
    next step meanwhile), or at once otherwise. `get()` waits for this step's copies only,
    not for later work queued on the stream."""

    def __init__(self, tensors: dict, prompt_logprobs: list):
        self._host = {k: _to_host(v) for k, v in tensors.items()}
        self._prompt = [tuple(_to_host(x) for x in job) for job in prompt_logprobs]
        self._event = None
        if any(v is not None and v.device.type == "cuda" for v in tensors.values()) or any(
                x is not None and x.device.type == "cuda" for job in prompt_logprobs for x in job):
            self._event = torch.cuda.Event()
            self._event.record()
        self._result: Optional[ModelRunnerOutput] = None

    @classmethod
    def empty(cls) -> "PendingRunnerOutput":
        return cls({}, [])

    def get(self) -> ModelRunnerOutput:
        if self._result is None:
            if self._event is not None:
                self._event.synchronize()
            h = self._host
            timed_out = h.get("mask_timed_out")
            if timed_out is not None and int(timed_out[0]):
                raise RuntimeError("the device stopped waiting for a guided step's grammar mask "
                                   "(model_runner/grammar_mask.py): its tokens are unmasked")
            top = None
            if h.get("topk_ids") is not None:
                top = (h["topk_ids"].tolist(), h["topk_logprobs"].tolist(), h["ranks"].tolist())
            self._result = ModelRunnerOutput(
                sampled_token_ids=_tolist(h.get("token_ids")) or [],
                logprobs=_tolist(h.get("logprobs")), topk=top,
                prompt_logprobs=[tuple(_tolist(x) for x in job) for job in self._prompt],
                pooled=None if h.get("pooled") is None else h["pooled"].numpy())
            self._host = self._prompt = None
        return self._result
