"""Beam search above the engine core, as vLLM's `LLM.beam_search` and its OpenAI server do.

A beam-search request never reaches the core as such: each of its steps is one ordinary
request per live beam (the prompt + that beam's tokens, max_tokens=1, greedy, the top
2 x width logprobs), submitted together so they batch in one engine step; their top
candidates feed `beam_search.step_beams`. The core therefore serves every request in its
pipelined loop, and prefix caching (--enable-prefix-caching) makes the repeated
prefixes cheap.

`BeamSearchRun` is the one implementation of the per-request logic; `SyncBeamSearch`
drives runs from the synchronous engine's step loop (offline `LLM`), and
`run_beam_search_async` from the servers' `AsyncLLM` streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator, Callable, Optional

from llmcore.engine.beam_search import Beam, BeamState, beam_stop_ids, best_hypotheses, step_beams
from llmcore.engine.request import RequestState
from llmcore.outputs import CompletionOutput, RequestOutput
from llmcore.sampling_params import SamplingParams

# (step request id, prompt, params) of one beam of one step
StepRequest = tuple


class BeamSearchRun:
    """One beam-search request: which requests its next step needs, and what to keep of
    their outputs. `req` is the validated parent request (tokenized prompt, stop ids
    including the generation config's extra EOS ids, resolved max_tokens)."""

    def __init__(self, req: RequestState, eos_token_id: Optional[int], max_model_len: int,
                 max_logprobs: int, tokenizer=None):
        p = req.params
        self.req = req
        self.width = req.num_seqs_total
        if 2 * self.width > max_logprobs:
            raise ValueError(f"best_of: beam search with width {self.width} reads the top "
                             f"{2 * self.width} logprobs per step, more than --max-logprobs "
                             f"({max_logprobs})")
        self.eos_token_id = eos_token_id
        self.max_model_len = max_model_len
        self.tokenizer = tokenizer
        self.state = BeamState(width=self.width, length_penalty=p.length_penalty,
                               early_stopping=p.early_stopping)
        self.stop_ids = beam_stop_ids(eos_token_id, p.ignore_eos, p.stop_token_ids)
        self.beams: list = [Beam([])]
        self.num_steps = 0
        self.done = False
        self.prompt_logprobs = None
        self._outputs: list = []          # this step's outputs, by beam

    @property
    def request_id(self) -> str:
        return self.req.request_id

    def step_requests(self) -> list:
        """The step's requests, one per live beam, in beam order."""
        p = self.req.params
        reqs = []
        for i, beam in enumerate(self.beams):
            params = SamplingParams(
                n=1, temperature=0.0, max_tokens=1, logprobs=2 * self.width, detokenize=False,
                # the prompt's logprobs ride on the first step (its one beam is the prompt)
                prompt_logprobs=p.prompt_logprobs if self.num_steps == 0 else None)
            prompt = {"prompt_token_ids": self.req.prompt_token_ids + beam.output_token_ids}
            reqs.append((f"{self.request_id}#beam{self.num_steps}.{i}", prompt, params))
        self._outputs = [None] * len(reqs)
        return reqs

    def collect(self, index: int, out: RequestOutput) -> bool:
        """Record beam `index`'s finished step output; True once the step has all of them."""
        self._outputs[index] = out
        return all(o is not None for o in self._outputs)

    def advance(self, outputs: Optional[list] = None) -> None:
        """Keep the best continuations of this step's outputs (in beam order)."""
        outputs = self._outputs if outputs is None else outputs
        k = 2 * self.width
        ids, lps = [], []
        for out in outputs:
            top = out.outputs[0].logprobs[0] if out.outputs and out.outputs[0].logprobs else {}
            ranked = sorted(((lp.rank, tok, lp.logprob) for tok, lp in top.items()
                             if lp.rank is not None and lp.rank <= k), key=lambda c: c[0])
            ids.append([tok for _, tok, _ in ranked])
            lps.append([lp for _, _, lp in ranked])
        if self.num_steps == 0 and outputs:
            self.prompt_logprobs = outputs[0].prompt_logprobs
        plen = len(self.req.prompt_token_ids)
        decision = step_beams(self.state, self.beams, (ids, lps), self.stop_ids,
                              self.req.max_tokens, lambda n: plen + n >= self.max_model_len,
                              self.eos_token_id)
        self.num_steps += 1
        self._outputs = []
        if decision.done:
            self.done, self.beams = True, []
        else:
            self.beams = [Beam(parent.output_token_ids + [tok], val)
                          for parent, tok, val, _ in decision.continue_beams]

    def final_output(self) -> RequestOutput:
        """The n best hypotheses, best first."""
        req, p = self.req, self.req.params
        completions = []
        for i, h in enumerate(best_hypotheses(self.state, p.n)):
            text = ""
            if self.tokenizer is not None and p.detokenize and h.token_ids:
                text = self.tokenizer.decode(h.token_ids, skip_special_tokens=p.skip_special_tokens)
            completions.append(CompletionOutput(
                index=i, text=text, token_ids=list(h.token_ids),
                cumulative_logprob=h.cumulative_logprob, logprobs=None,
                finish_reason=h.finish_reason, stop_reason=h.stop_reason))
        req.finished = True
        now = time.time()
        if req.metrics.first_token_time is None:
            req.metrics.first_token_time = now
        req.metrics.last_token_time = req.metrics.finished_time = now
        return RequestOutput(request_id=req.request_id, prompt=req.prompt,
                             prompt_token_ids=req.prompt_token_ids,
                             prompt_logprobs=self.prompt_logprobs, outputs=completions,
                             finished=True, metrics=req.metrics)


class SyncBeamSearch:
    """Beam searches driven by the synchronous engine's step loop. `submit(requests,
    priority)` adds one step's requests to the engine; `step_outputs` swallows their
    outputs and returns the result of each search that ended."""

    def __init__(self, submit: Callable[[list, int], None]):
        self._submit = submit
        self.runs: dict[str, tuple] = {}       # request id -> (BeamSearchRun, priority)
        self._owner: dict[str, tuple] = {}     # step request id -> (BeamSearchRun, beam index)

    def add(self, run: BeamSearchRun, priority: int = 0) -> None:
        if run.request_id in self.runs:
            raise ValueError(f"request_id {run.request_id!r} is already in use")
        self.runs[run.request_id] = (run, priority)
        try:
            self._next_step(run, priority)
        except BaseException:
            self.abort([run.request_id])
            raise

    def _next_step(self, run: BeamSearchRun, priority: int) -> None:
        reqs = run.step_requests()
        for i, (sid, _, _) in enumerate(reqs):
            self._owner[sid] = (run, i)
        self._submit(reqs, priority)

    def is_step_request(self, request_id: str) -> bool:
        return request_id in self._owner

    def step_outputs(self, outs: list) -> list:
        """The engine step's outputs less the beam steps', plus finished searches'."""
        result = []
        for out in outs:
            owner = self._owner.get(out.request_id)
            if owner is None:
                result.append(out)
                continue
            if not out.finished:
                continue
            del self._owner[out.request_id]
            run, index = owner
            if not run.collect(index, out):
                continue
            run.advance()
            if run.done:
                self.runs.pop(run.request_id, None)
                result.append(run.final_output())
            else:
                self._next_step(run, self.runs[run.request_id][1])
        return result

    def abort(self, request_ids) -> list:
        """Forget these searches; returns their in-flight step request ids (to abort)."""
        step_ids = []
        for rid in request_ids:
            entry = self.runs.pop(rid, None)
            if entry is None:
                continue
            for sid, (run, _) in list(self._owner.items()):
                if run is entry[0]:
                    del self._owner[sid]
                    step_ids.append(sid)
        return step_ids

    def num_step_requests(self) -> int:
        return len(self._owner)


async def run_beam_search_async(
        run: BeamSearchRun,
        generate: Callable[[str, dict, SamplingParams], AsyncIterator[RequestOutput]]) -> RequestOutput:
    """Drive `run` through an async engine: `generate(request_id, prompt, params)` returns
    a request's output stream. A cancelled search closes its step streams, which aborts
    their requests in the engine."""
    while not run.done:
        streams = [generate(sid, prompt, params) for sid, prompt, params in run.step_requests()]
        # the tasks start in one event-loop pass, so the step's requests batch; a failing
        # one cancels the others (their streams close and abort their requests)
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(_last_output(s)) for s in streams]
        run.advance([t.result() for t in tasks])
    return run.final_output()


async def _last_output(stream: AsyncIterator[RequestOutput]) -> RequestOutput:
    last = None
    async with contextlib.aclosing(stream) as s:
        async for out in s:
            last = out
    return last
