"""EngineCore: the token-level step loop. schedule (C++) -> executor.execute_model -> update.

It knows token ids and sampling parameters only: no tokenizer, no text, no HTTP. Per step
it returns the new token ids (and logprobs) of every sample it advanced, batched in one
EngineCoreOutputs. Token-valued stops (EOS, stop token ids, max_tokens, the context
length) are decided here; stop strings are the front end's, which then aborts the request.

With async scheduling the core launches step k before reading step k-1's tokens: every
sequence sampled in k-1 holds a placeholder in the scheduler, and the runner takes its
value from k-1's samples on the device. Beam search runs above the core
(engine/beam_driver.py): its steps reach it as ordinary requests.

Guided decoding: a request's grammar compiles in the structured-output manager's threads
while the request waits here, outside the scheduler (other requests keep stepping); once
compiled each of its sequences gets a matcher, whose bitmask for the step is filled on the
host and applied to the logits by the runner. The mask of step k depends on step k-1's
token: in the pipelined loop the runner launches step k's forward and waits to sample
(defer_sampling) until the core, having read step k-1's tokens meanwhile, sends the mask.
Executors that cannot defer (multiprocess) run synchronous steps while a constrained
request is live.

Pipeline parallelism (M stages): up to M synchronous steps ("micro-batches", disjoint sets
of sequences) are in flight at once, so that every stage has work (engine/micro_batches.py);
a step() launches micro-batches until M are out or nothing more can be scheduled, then
completes the oldest. Every kind of request runs in them: a sequence's grammar mask is
filled when its micro-batch is launched, from the tokens it had when its previous one came
back. Async scheduling (device-side tokens) is not used with M > 1.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Iterable, Optional

import numpy as np

from llmcore import _core
from llmcore.config.engine_config import EngineConfig
from llmcore.config.pooler_config import PoolerConfig, check_task
from llmcore.engine.core_grammar import GuidedStepsMixin, grammar_manager
from llmcore.engine.core_state import CoreRequest, CoreSeq, OutputBatch
from llmcore.engine.core_types import EngineCoreOutputs, EngineCoreRequest, SchedulerStats
from llmcore.engine.micro_batches import LaunchedStep, MicroBatchQueue
from llmcore.executor import Executor
from llmcore.model_runner.step_io import NewSeq, PoolingJob, PromptLogprobJob, StepInput

logger = logging.getLogger(__name__)


def _moves_blocks(plan) -> bool:
    """Whether a plan that runs no sequence still swaps or copies blocks."""
    return bool(len(plan.blocks_to_swap_in) or len(plan.blocks_to_swap_out)
                or len(plan.blocks_to_copy))


class EngineCore(GuidedStepsMixin):
    def __init__(self, config: EngineConfig, eos_token_id: Optional[int] = None,
                 executor_class: Optional[type] = None):
        self.config = config
        self.eos_token_id = eos_token_id
        cls = executor_class or Executor.get_class(config)
        self.executor = cls(config, eos_token_id=eos_token_id)
        num_device, num_cpu = self.executor.determine_num_blocks()
        if num_device < 1:
            raise ValueError("no memory left for the KV cache: raise --gpu-memory-utilization or "
                             "lower --max-model-len")
        sc, cc = config.scheduler_config, config.cache_config
        if sc.preemption_mode == "swap" and num_cpu == 0:
            raise ValueError("--preemption-mode swap needs --swap-space > 0")
        self.executor.initialize_cache(num_device, num_cpu)
        cfg = _core.SchedulerConfig()
        cfg.block_size = cc.block_size
        cfg.num_device_blocks = num_device
        cfg.num_cpu_blocks = num_cpu
        cfg.max_num_seqs = sc.max_num_seqs
        cfg.max_model_len = sc.max_model_len
        cfg.max_num_batched_tokens = sc.max_num_batched_tokens
        cfg.enable_chunked_prefill = sc.enable_chunked_prefill
        cfg.enable_prefix_caching = cc.enable_prefix_caching
        cfg.preemption_mode = sc.preemption_mode
        cfg.delay_factor = sc.scheduler_delay_factor
        # micro-batches in flight: one per pipeline stage (SchedulerConfig.num_micro_batches
        # overrides it, e.g. 1 for a benchmark's baseline)
        m = sc.num_micro_batches
        cfg.num_micro_batches = m = config.parallel_config.pipeline_parallel_size if m is None \
            else m
        if m < 1:
            raise ValueError(f"num_micro_batches must be >= 1, got {m}")
        self.scheduler = _core.Scheduler(cfg)
        self._micro_batches = MicroBatchQueue(m) if m > 1 else None
        self.num_device_blocks, self.num_cpu_blocks = num_device, num_cpu
        self.max_model_len = sc.max_model_len
        self.async_scheduling = sc.async_scheduling
        self.requests: dict[str, CoreRequest] = {}
        self._seqs: dict[int, tuple] = {}          # seq_id -> (CoreRequest, CoreSeq)
        self._ids = itertools.count()
        self._inflight = None                      # (PendingRunnerOutput, normal, placeholders)
        self._num_unpipelinable = 0                # live requests the pipelined step cannot serve
        self._new_seqs: list = []                  # sampling state the runner has not seen
        self._gone_seqs: list = []                 # sequences the runner can forget
        self._stats = SchedulerStats(num_total_blocks=num_device)
        self.grammars = grammar_manager(config, eos_token_id)
        self._defer_ok = bool(getattr(self.executor, "supports_deferred_sampling", False))
        self._awaiting_grammar: dict[str, CoreRequest] = {}   # compiling, not yet scheduled
        self._num_guided = 0                       # live guided requests: 0 = no mask work

    def _pipelinable(self, req: CoreRequest) -> bool:
        """The pipelined step serves every request (beam search runs above the core), guided
        ones too where the executor can defer sampling for the grammar mask, but not pooling
        (embedding) requests, whose vector is read synchronously in the step their prompt
        ends."""
        return req.pooling is None and (req.grammar is None or self._defer_ok)

    # ---------------------------------------------------------------- requests
    def add_request(self, r: EngineCoreRequest) -> None:
        if r.request_id in self.requests:
            raise ValueError(f"request_id {r.request_id!r} is already in use")
        check_task(self.config.task, r.pooling_params is not None)
        if r.pooling_params is not None:
            self._add_pooling_request(r)
            return
        req = CoreRequest(r.request_id, next(self._ids), r.prompt_token_ids, r.sampling_params,
                          r.max_tokens, arrival_time=r.arrival_time, priority=r.priority)
        p = req.params
        if p.use_beam_search:
            raise ValueError("use_beam_search: beam search runs above the engine core "
                             "(engine/beam_driver.py), not in it")
        if p.guided_decoding is not None:
            req.grammar = self.grammars.request_grammar(p.guided_decoding)  # ValueError: bad spec
        self.requests[req.request_id] = req
        if not self._pipelinable(req):
            self._num_unpipelinable += 1
        if req.grammar is not None:
            self._num_guided += 1
            self._awaiting_grammar[req.request_id] = req   # scheduled once compiled
        else:
            self._schedule_request(req)

    def _schedule_request(self, req: CoreRequest) -> None:
        p = req.params
        req.prompt_logprobs_done = p.prompt_logprobs is None
        seq = CoreSeq(next(self._ids), 0)
        if req.grammar is not None:
            seq.matcher = self.grammars.new_matcher(req.grammar)
        req.seqs.append(seq)
        req.pending_fork = req.num_seqs_total > 1
        self._new_seqs.append(NewSeq(seq.seq_id, p, req.prompt_token_ids, []))
        self.scheduler.add_request(req.internal_id, seq.seq_id,
                                   np.asarray(req.prompt_token_ids, dtype=np.int32),
                                   req.arrival_time, req.priority, 0, p.prompt_logprobs is None)
        self._seqs[seq.seq_id] = (req, seq)

    def _add_pooling_request(self, r: EngineCoreRequest) -> None:
        """An embedding request: one sequence, prefilled (in chunks if need be), pooled in the
        step its prompt ends, finished without a token. MEAN/CLS skip the prefix cache (every
        position must be computed; see model_runner/pooler.py)."""
        pc = self.config.pooler_config
        norm = r.pooling_params.normalize
        req = CoreRequest(r.request_id, next(self._ids), r.prompt_token_ids, None, 0,
                          pooling=PoolerConfig(pc.pooling_type,
                                               pc.normalize if norm is None else norm))
        seq = CoreSeq(next(self._ids), 0)
        req.seqs.append(seq)
        self.scheduler.add_request(req.internal_id, seq.seq_id,
                                   np.asarray(req.prompt_token_ids, dtype=np.int32),
                                   r.arrival_time, r.priority, 0,
                                   not req.pooling.needs_every_position)
        self.requests[req.request_id] = req
        self._seqs[seq.seq_id] = (req, seq)
        self._num_unpipelinable += 1

    def abort_requests(self, request_ids: Iterable[str]) -> None:
        for rid in request_ids:
            req = self.requests.pop(rid, None)
            if req is None:
                continue
            if self._awaiting_grammar.pop(rid, None) is None:
                self.scheduler.abort_request(req.internal_id)
            for seq in req.seqs:
                self._release_seq(seq)
            req.finished = True
            if not self._pipelinable(req):
                self._num_unpipelinable -= 1
            if req.grammar is not None:
                self._num_guided -= 1

    def _release_seq(self, seq: CoreSeq) -> None:
        if self._seqs.pop(seq.seq_id, None) is not None:
            self._gone_seqs.append(seq.seq_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # ---------------------------------------------------------------- step
    def step(self) -> EngineCoreOutputs:
        """One engine step. With async scheduling it returns the tokens of the step before
        it (its own are still on the device)."""
        batch = OutputBatch()
        if self._awaiting_grammar:
            self._admit_compiled(batch)
            if self._awaiting_grammar and len(self._awaiting_grammar) == len(self.requests) \
                    and self._inflight is None and not self._micro_batches:
                # nothing else to run: wait for a compile instead of spinning
                self.grammars.wait_any([r.grammar for r in self._awaiting_grammar.values()],
                                       timeout=0.05)
                self._admit_compiled(batch)
                if len(self._awaiting_grammar) == len(self.requests):
                    self._update_stats()
                    return EngineCoreOutputs(outputs=batch.finish(), stats=self._stats,
                                             timestamp=time.time())
        if self._micro_batches is not None:
            self._step_micro_batches(batch)
        elif self.async_scheduling and self._num_unpipelinable == 0:
            self._step_pipelined(batch)
        else:
            if self._inflight is not None:
                self._finish_inflight(self._take_inflight(), batch)
            self._step_sync(batch)
        self._update_stats()
        return EngineCoreOutputs(outputs=batch.finish(), stats=self._stats, timestamp=time.time())

    def _sample0(self, request_id: str) -> CoreSeq:
        req = self.requests.get(request_id)
        return req.seqs[0] if req is not None and req.seqs else CoreSeq(-1, 0)

    def _take_inflight(self):
        prev, self._inflight = self._inflight, None
        return prev

    def _step_input(self, plan, **kw) -> StepInput:
        new, gone = self._new_seqs, self._gone_seqs
        self._new_seqs, self._gone_seqs = [], []
        return StepInput(plan=plan, new_seqs=new, finished_seq_ids=gone, **kw)

    def _step_sync(self, batch: OutputBatch) -> None:
        launched = self._prepare_step()
        if launched is not None:
            self._complete_step(launched, batch)

    def _step_micro_batches(self, batch: OutputBatch) -> None:
        """Launch micro-batches until M are in flight or nothing more can be scheduled,
        then complete the oldest (its outputs are this step's)."""
        queue = self._micro_batches
        while not queue.full:
            launched = self._prepare_step()
            if launched is None:
                break
            queue.push(launched)
        if queue:
            self._complete_step(queue.pop_oldest(), batch)

    def _prepare_step(self) -> Optional[LaunchedStep]:
        """Schedule and launch a synchronous step; None when it holds no sequence."""
        plan = self.scheduler.schedule(time.time())
        micro = self._micro_batches is not None
        if plan.num_seqs == 0:
            if not micro or _moves_blocks(plan):
                self.executor.execute_model(self._step_input(plan))  # swaps only, if any
            return None
        seq_ids = np.asarray(plan.seq_ids)
        qsl = np.asarray(plan.query_start_loc)
        sample_pos = np.flatnonzero(np.asarray(plan.do_sample))
        normal, normal_rows, forked = [], [], []
        for pos, sid in zip(sample_pos.tolist(), seq_ids[sample_pos].tolist()):
            req, seq = self._seqs[sid]
            row = int(qsl[pos + 1] - 1)
            if req.pooling is not None:
                continue  # pooled below, not sampled
            if req.pending_fork:
                req.pending_fork = False
                children = self._fork_children(req, seq)
                forked += children
                for child in [seq] + children:
                    normal.append((req, child))
                    normal_rows.append(row)
            else:
                normal.append((req, seq))
                normal_rows.append(row)
        jobs = self._prompt_logprob_jobs(plan, seq_ids, qsl)
        g_rows = [i for i, (_, seq) in enumerate(normal) if seq.matcher is not None] \
            if self._num_guided else None
        bitmask = self.grammars.fill_bitmask([normal[i][1].matcher for i in g_rows]) \
            if g_rows else None
        step = self._step_input(plan, sample_seq_ids=[s.seq_id for _, s in normal],
                                sample_rows=np.asarray(normal_rows, dtype=np.int64),
                                prompt_logprob_jobs=jobs, grammar_bitmask=bitmask,
                                grammar_rows=np.asarray(g_rows, dtype=np.int64) if g_rows else None,
                                pooling_jobs=self._pooling_jobs(plan, seq_ids, qsl))
        launched = LaunchedStep(self.executor.execute_model(step), normal, jobs,
                                step.pooling_jobs)
        if micro:
            # (copies: the plan's arrays are views of an output the scheduler recycles)
            launched.in_flight_seq_ids = np.concatenate(
                [seq_ids, np.asarray([c.seq_id for c in forked], dtype=np.int64)])
            launched.job_requests = [self.requests[j.request_id] for j in jobs]
        self._stats.prompt_tokens_total += int(qsl[plan.num_prefill_seqs])
        return launched

    def _complete_step(self, launched: LaunchedStep, batch: OutputBatch) -> None:
        """Wait for a launched step's output; its tokens, stops and scheduler updates."""
        out = launched.pending.get()
        jobs = launched.prompt_logprob_jobs
        micro = launched.in_flight_seq_ids is not None
        if micro:
            self.scheduler.clear_in_flight(launched.in_flight_seq_ids)
            # before the samples, which may finish the request; a request aborted while
            # the micro-batch was out gets nothing
            for job, req, res in zip(jobs, launched.job_requests, out.prompt_logprobs):
                if not req.finished:
                    batch.prompt_logprobs(job, res, req.seqs[0])
        if out.pooled is not None:
            self._finish_pooled(launched.pooling_jobs, out.pooled, batch)
        upd_ids: list = []
        upd_tokens: list = []
        if launched.normal:
            self._process_samples(launched.normal, out, batch, upd_ids, upd_tokens,
                                  skip_aborted=micro)
        if not micro:
            for job, res in zip(jobs, out.prompt_logprobs):
                batch.prompt_logprobs(job, res, self._sample0(job.request_id))
        if upd_ids:
            self.scheduler.update(np.asarray(upd_ids, dtype=np.int64),
                                  np.asarray(upd_tokens, dtype=np.int32))

    # ---------------------------------------------------------------- pipelined step
    def _step_pipelined(self, batch: OutputBatch) -> None:
        """Schedule and launch step k, then process step k-1's tokens while the device runs
        k. Only token-valued stops (EOS, stop ids) and the front end's stop strings are
        learned late: such a sequence has one wasted row in k. Length stops are known at
        sampling time and release the sequence at once."""
        plan = self.scheduler.schedule(time.time())
        prev = self._take_inflight()
        if plan.num_seqs == 0:
            self.executor.execute_model(self._step_input(plan))  # swaps only, if any
            if prev is not None:
                self._finish_inflight(prev, batch)
            return
        seq_ids = np.asarray(plan.seq_ids)
        qsl = np.asarray(plan.query_start_loc)
        sample_pos = np.flatnonzero(np.asarray(plan.do_sample))
        sample_ids = seq_ids[sample_pos].tolist()
        rows = (qsl[sample_pos + 1] - 1).astype(np.int64)
        lens = np.asarray(plan.seq_lens)[sample_pos]
        normal = [self._seqs[sid] for sid in sample_ids]
        if any(req.pending_fork for req, _ in normal):
            # n / best_of > 1: the samples fork from the prompt's last row, each drawing its own
            normal, rows, lens = self._fork_pending(normal, rows, lens)
            sample_ids = [s.seq_id for _, s in normal]
        jobs = self._prompt_logprob_jobs(plan, seq_ids, qsl)
        g_rows = [i for i, (_, seq) in enumerate(normal) if seq.matcher is not None] \
            if self._num_guided else None
        g_rows_np = np.asarray(g_rows, dtype=np.int64) if g_rows else None
        step = self._step_input(plan, sample_seq_ids=sample_ids, sample_rows=rows,
                                sample_seq_lens=lens, prompt_logprob_jobs=jobs,
                                use_device_tokens=True, defer_sampling=bool(g_rows),
                                grammar_rows=g_rows_np)
        verdicts, fill = None, None
        if g_rows:
            # Step k's mask needs step k-1's tokens in the matchers. They are on the host
            # already (k-1's sampling went out at the end of the last step): feed them to
            # the grammars now and fill k's mask (off this thread where the backend can)
            # while this thread launches k and processes k-1 (rows of sequences that stop
            # in k-1 are discarded: allowed everything).
            verdicts = self._accept_inflight(prev) if prev is not None else None
            fill = self.grammars.start_fill(
                [self._fill_matcher(req, seq, verdicts) for req, seq in
                 (normal[i] for i in g_rows)])
        try:
            pending = self.executor.execute_model(step)
        except BaseException:
            if fill is not None:
                fill.wait()   # the mask's fill must not outlive the step
            raise
        try:
            # the device runs step k; the host finishes step k-1 meanwhile
            if prev is not None:
                self._finish_inflight(prev, batch, verdicts)
            if g_rows:
                bitmask = fill.result()
                for j, i in enumerate(g_rows):
                    if normal[i][1].finished or normal[i][0].finished:
                        bitmask[j] = -1
        except BaseException:
            if g_rows:  # a device held behind step k's mask must not wait forever
                fill.wait()   # nor may the mask's fill outlive the step
                self.executor.sample_deferred(None, g_rows_np)
            raise
        if g_rows:
            pending = self.executor.sample_deferred(bitmask, g_rows_np)
        self._stats.prompt_tokens_total += int(qsl[plan.num_prefill_seqs])
        if not normal:  # only prefill chunks that sample nothing
            if jobs:
                self._inflight = (pending, [], set(), jobs, None)
            return
        ph_ids = []
        placeholders = set()
        max_len = self.max_model_len
        for req, seq in normal:
            if seq.finished or req.finished:
                continue  # stopped in k-1: this row is discarded
            n_after = len(seq.output_token_ids) + 1
            if n_after >= req.max_tokens or len(req.prompt_token_ids) + n_after >= max_len:
                self.scheduler.finish_seq(seq.seq_id)
                seq.sched_released = True
            else:
                ph_ids.append(seq.seq_id)
                placeholders.add(seq.seq_id)
        if ph_ids:
            self.scheduler.append_placeholders(np.asarray(ph_ids, dtype=np.int64))
        # (the mask each guided row was sampled under: its grammar's verdicts, next step)
        self._inflight = (pending, normal, placeholders, jobs,
                          (g_rows, bitmask) if g_rows else None)

    def _fork_pending(self, normal, rows, lens):
        out_normal, out_rows, out_lens = [], [], []
        for (req, seq), row, n in zip(normal, rows.tolist(), lens.tolist()):
            group = [seq]
            if req.pending_fork:
                req.pending_fork = False
                group += self._fork_children(req, seq)
            for s in group:
                out_normal.append((req, s))
                out_rows.append(row)
                out_lens.append(n)
        return out_normal, np.asarray(out_rows, dtype=np.int64), np.asarray(out_lens, dtype=np.int64)

    def _finish_inflight(self, inflight, batch: OutputBatch, verdicts: Optional[dict] = None
                         ) -> None:
        """Process a launched step's sampled tokens (waits for them). verdicts: the
        grammars' (accepted, terminated) per sequence id, where _accept_inflight fed them
        already."""
        pending, normal, placeholders, jobs, _ = inflight
        out = pending.get()
        for job, res in zip(jobs, out.prompt_logprobs):
            batch.prompt_logprobs(job, res, self._sample0(job.request_id))
        tokens, lps, top = out.sampled_token_ids, out.logprobs, out.topk
        fix_ids, fix_tokens = [], []
        for i, (req, seq) in enumerate(normal):
            if seq.finished or req.finished:
                continue
            tok = tokens[i]
            self._append_token(req, seq, tok, lps[i], top, i, batch,
                               verdicts.get(seq.seq_id) if verdicts else None)
            if seq.seq_id in placeholders:
                fix_ids.append(seq.seq_id)
                fix_tokens.append(tok)
            if seq.finished:
                self._finish_seq(req, seq)
        if fix_ids:  # finished sequences are skipped by the scheduler
            self.scheduler.set_last_tokens(np.asarray(fix_ids, dtype=np.int64),
                                           np.asarray(fix_tokens, dtype=np.int32))

    # ---------------------------------------------------------------- tokens
    def _append_token(self, req: CoreRequest, seq: CoreSeq, tok: int, lp: float, top, row: int,
                      batch: OutputBatch, verdict: Optional[tuple] = None) -> None:
        seq.output_token_ids.append(tok)
        reason, stop_reason = self._check_stop(req, seq, tok)
        if seq.matcher is not None:
            reason, stop_reason = self._advance_grammar(req, seq, tok, reason, stop_reason,
                                                        verdict)
        if reason is not None:
            seq.finished = True
        self._stats.generation_tokens_total += 1
        batch.token(req, seq, tok, lp, top, row, reason, stop_reason)

    def _check_stop(self, req: CoreRequest, seq: CoreSeq, tok: int):
        """Token-valued stops in vLLM's order (the front end adds stop strings)."""
        p = req.params
        n = len(seq.output_token_ids)
        if len(req.prompt_token_ids) + n >= self.max_model_len:
            return "length", None
        if n >= p.min_tokens:
            if not p.ignore_eos and self.eos_token_id is not None and tok == self.eos_token_id:
                return "stop", None
            if p.stop_token_ids and tok in p.stop_token_ids:
                return "stop", int(tok)
            if p.max_tokens is not None and n >= p.max_tokens:
                return "length", None
        if n >= req.max_tokens:
            return "length", None
        return None, None

    def _process_samples(self, normal, out, batch, upd_ids, upd_tokens,
                         skip_aborted: bool = False) -> None:
        tokens, lps, top = out.sampled_token_ids, out.logprobs, out.topk
        for i, (req, seq) in enumerate(normal):
            if skip_aborted and req.finished:
                continue  # aborted while its micro-batch was in flight
            tok = tokens[i]
            self._append_token(req, seq, tok, lps[i], top, i, batch)
            if seq.finished:
                self._finish_seq(req, seq)
            else:
                upd_ids.append(seq.seq_id)
                upd_tokens.append(tok)

    def _fork_seq(self, req: CoreRequest, parent: CoreSeq, index: int) -> CoreSeq:
        """A child sequence sharing the parent's blocks (copy-on-write) and its tokens."""
        child = CoreSeq(next(self._ids), index)
        self.scheduler.fork(parent.seq_id, child.seq_id)
        child.output_token_ids = list(parent.output_token_ids)
        req.seqs.append(child)
        self._seqs[child.seq_id] = (req, child)
        return child

    def _fork_children(self, req: CoreRequest, parent: CoreSeq) -> list:
        children = []
        p = req.params
        for index in range(1, req.num_seqs_total):
            child = self._fork_seq(req, parent, index)
            if req.grammar is not None:  # forked before the first token: a fresh matcher
                child.matcher = self.grammars.new_matcher(req.grammar)
            params = p
            if p.seed is not None:
                # Each of the n samples draws its own stream; still reproducible per request.
                params = p.clone()
                params.seed = p.seed + index
            self._new_seqs.append(NewSeq(child.seq_id, params, req.prompt_token_ids, []))
            children.append(child)
        return children

    def _prompt_logprob_jobs(self, plan, seq_ids, qsl) -> list:
        jobs = []
        ctx = np.asarray(plan.context_lens)
        ntok = np.asarray(plan.num_tokens)
        for pos in range(int(plan.num_prefill_seqs)):
            req, seq = self._seqs[int(seq_ids[pos])]
            if req.prompt_logprobs_done or seq.index != 0:
                continue
            plen = len(req.prompt_token_ids)
            start = int(ctx[pos])
            first = max(start, req.prompt_logprobs_next)
            last = min(start + int(ntok[pos]), plen - 1)
            if last > first:  # positions p predict prompt token p+1
                jobs.append(PromptLogprobJob(req.request_id, first, last,
                                             int(qsl[pos]) + first - start,
                                             req.prompt_token_ids[first + 1:last + 1],
                                             req.params.prompt_logprobs))
                req.prompt_logprobs_next = last
            if ctx[pos] + ntok[pos] >= plen:
                req.prompt_logprobs_done = True
        return jobs

    def _pooling_jobs(self, plan, seq_ids, qsl) -> list:
        """A PoolingJob per prefill chunk of a pooling request in this step."""
        jobs: list = []
        if self.config.pooler_config is None:
            return jobs
        ctx = np.asarray(plan.context_lens)
        ntok = np.asarray(plan.num_tokens)
        for pos in range(int(plan.num_prefill_seqs)):
            req, seq = self._seqs[int(seq_ids[pos])]
            if req.pooling is None:
                continue
            first, n = int(ctx[pos]), int(ntok[pos])
            jobs.append(PoolingJob(seq.seq_id, int(qsl[pos]), n, first,
                                   first + n >= len(req.prompt_token_ids),
                                   req.pooling.pooling_type, req.pooling.normalize))
        return jobs

    def _finish_pooled(self, jobs: list, pooled: np.ndarray, batch: OutputBatch) -> None:
        """The vectors of the pooling requests whose prompt ended this step finish them."""
        done = [j for j in jobs if j.last]
        for job, vec in zip(done, pooled):
            entry = self._seqs.get(job.seq_id)
            if entry is None:
                continue  # aborted while its micro-batch was in flight
            req, seq = entry
            batch.pooled(req, np.ascontiguousarray(vec, dtype="<f4").tobytes())
            seq.finished = True
            self._finish_seq(req, seq)

    def _finish_seq(self, req: CoreRequest, seq: CoreSeq) -> None:
        if not seq.sched_released:
            self.scheduler.finish_seq(seq.seq_id)
            seq.sched_released = True
        self._release_seq(seq)
        if not req.pending_fork and all(s.finished for s in req.seqs):
            self._finish_request(req)

    def _finish_request(self, req: CoreRequest) -> None:
        req.finished = True
        if not self._pipelinable(req):
            self._num_unpipelinable -= 1
        if req.grammar is not None:
            self._num_guided -= 1
        self.requests.pop(req.request_id, None)

    # ---------------------------------------------------------------- stats
    def _update_stats(self) -> None:
        s, st = self.scheduler, self._stats
        st.num_running, st.num_waiting, st.num_swapped = s.num_running(), s.num_waiting(), s.num_swapped()
        st.kv_cache_usage = s.device_usage()
        st.num_free_blocks = s.num_free_device_blocks()
        st.prefix_cache_hit_rate = s.prefix_cache_hit_rate()
        st.num_preemptions_total = s.num_preemptions()

    def get_stats(self) -> SchedulerStats:
        self._update_stats()
        return SchedulerStats(**{f: getattr(self._stats, f) for f in SchedulerStats.__struct_fields__})

    def ready_info(self) -> dict:
        return {"num_device_blocks": self.num_device_blocks, "num_cpu_blocks": self.num_cpu_blocks}

    def shutdown(self) -> None:
        self.grammars.shutdown()
        self.executor.shutdown()
