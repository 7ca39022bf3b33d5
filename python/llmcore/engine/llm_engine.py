"""LLMEngine: one step = schedule (C++) -> forward -> sample -> update (C++) -> outputs."""

from __future__ import annotations

import itertools
import logging
import time
from typing import Iterable, Optional, Union

import numpy as np
import torch

from llmcore import _core
from llmcore.config import EngineArgs
from llmcore.engine.beam_search import BeamState, best_hypotheses, step_beams
from llmcore.engine.inputs import InputProcessor
from llmcore.engine.output_processor import OutputProcessor
from llmcore.engine.pipeline import InFlightStep
from llmcore.engine.protocol import EngineStats, ServedModelInfo
from llmcore.engine.request import RequestState, SeqState
from llmcore.metrics import EngineMetrics
from llmcore.model_loader import get_model, load_model_config
from llmcore.model_runner.model_runner import CacheConfig, ModelRunner
from llmcore.outputs import CompletionOutput, RequestOutput
from llmcore.sampling import Sampler, SamplingBatchState, compute_prompt_logprobs
from llmcore.sampling_params import SamplingParams
from llmcore.tokenizer.detokenizer import IncrementalDetokenizer
from llmcore.tokenizer.loader import load_tokenizer

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return torch.device(name)


def default_max_num_batched_tokens(args: EngineArgs, max_model_len: int) -> int:
    if args.max_num_batched_tokens is not None:
        return args.max_num_batched_tokens
    # vLLM's defaults: small chunks keep decodes flowing; unchunked must fit any prompt.
    return 512 if args.enable_chunked_prefill else max(max_model_len, 2048)


def _pipelinable(req: RequestState) -> bool:
    """The pipelined step serves one-sequence requests without prompt logprobs."""
    return not req.is_beam and req.num_seqs_total == 1 and req.params.prompt_logprobs is None


class LLMEngine:
    def __init__(self, engine_args: EngineArgs):
        engine_args.validate()
        self.args = engine_args
        self.device = resolve_device(engine_args.device)
        torch.manual_seed(engine_args.seed)
        self.model_config = mc = load_model_config(engine_args, self.device)
        self.tokenizer = (None if engine_args.skip_tokenizer_init
                          else load_tokenizer(mc, engine_args.tokenizer_mode))
        model = get_model(mc, self.device)
        cache_config = CacheConfig(
            block_size=engine_args.block_size, kv_cache_dtype=engine_args.kv_cache_dtype,
            num_gpu_blocks_override=engine_args.num_gpu_blocks_override,
            gpu_memory_utilization=engine_args.gpu_memory_utilization,
            swap_space_gib=engine_args.swap_space,
            cpu_kv_cache_space_gib=(engine_args.cpu_kv_cache_space
                                    if engine_args.cpu_kv_cache_space is not None else 4.0),
            max_num_seqs=engine_args.max_num_seqs,
            max_num_batched_tokens=default_max_num_batched_tokens(engine_args, mc.max_model_len),
            enforce_eager=engine_args.enforce_eager)
        self.runner = ModelRunner(model, mc, cache_config, self.device)
        num_device, num_cpu = self.runner.determine_num_blocks()
        preemption_mode = engine_args.preemption_mode or "recompute"
        if preemption_mode == "swap" and num_cpu == 0:
            raise ValueError("--preemption-mode swap needs --swap-space > 0")
        if self.device.type == "cpu" and preemption_mode != "swap":
            # On the CPU the KV pool already lives in host memory: a swap pool would only be
            # used by swap preemption, so don't spend --swap-space GiB on it otherwise.
            num_cpu = 0
        self.runner.init_kv_cache(num_device, num_cpu)

        cfg = _core.SchedulerConfig()
        cfg.block_size = engine_args.block_size
        cfg.num_device_blocks = num_device
        cfg.num_cpu_blocks = num_cpu
        cfg.max_num_seqs = engine_args.max_num_seqs
        cfg.max_model_len = mc.max_model_len
        cfg.max_num_batched_tokens = default_max_num_batched_tokens(engine_args, mc.max_model_len)
        cfg.enable_chunked_prefill = engine_args.enable_chunked_prefill
        cfg.enable_prefix_caching = engine_args.enable_prefix_caching
        cfg.preemption_mode = preemption_mode
        if not cfg.enable_chunked_prefill and cfg.max_num_batched_tokens < mc.max_model_len:
            raise ValueError(f"--max-num-batched-tokens ({cfg.max_num_batched_tokens}) is smaller than "
                             f"--max-model-len ({mc.max_model_len}); enable chunked prefill or raise it")
        self.scheduler = _core.Scheduler(cfg)
        self.num_device_blocks, self.num_cpu_blocks = num_device, num_cpu

        self.model_info = ServedModelInfo(
            served_model_names=list(mc.served_model_names), model_path=mc.model,
            max_model_len=mc.max_model_len, vocab_size=mc.vocab_size, dtype=str(mc.dtype).split(".")[-1],
            block_size=engine_args.block_size, max_logprobs=engine_args.max_logprobs,
            eos_token_ids=list(mc.eos_token_ids), sampling_defaults=dict(mc.sampling_defaults))
        eos = getattr(self.tokenizer, "eos_token_id", None) if self.tokenizer else mc.eos_token_id
        self.eos_token_id = eos
        self.input_processor = InputProcessor(self.tokenizer, self.model_info,
                                              max_num_seqs=engine_args.max_num_seqs)
        self.output_processor = OutputProcessor(self.tokenizer, eos, mc.max_model_len)
        # Cumulative logprobs are always reported (and rank best_of samples).
        self.sampler = Sampler(always_compute_logprobs=True)
        self._slots_capacity = max(2 * engine_args.max_num_seqs, 64)
        self.sampling_state = SamplingBatchState(self._slots_capacity, mc.vocab_size, mc.max_model_len,
                                                 self.device, eos_token_id=eos, seed=engine_args.seed)
        self._free_slots = list(range(self._slots_capacity - 1, -1, -1))
        self.metrics = EngineMetrics(mc.served_model_names[0])
        self.requests: dict[str, RequestState] = {}
        self._seqs: dict[int, tuple] = {}          # seq_id -> (RequestState, SeqState)
        self._ids = itertools.count()
        self._stats = EngineStats(num_total_blocks=num_device)
        asched = engine_args.async_scheduling
        self.async_scheduling = self.device.type == "cuda" if asched is None else bool(asched)
        self._inflight: Optional[InFlightStep] = None
        self._num_unpipelinable = 0   # live requests the pipelined step cannot serve
        logger.info("llmcore engine: model=%s dtype=%s device=%s max_model_len=%d KV blocks=%d "
                    "(block_size=%d, %d tokens; max concurrency at max_model_len: %.1fx) swap blocks=%d",
                    mc.model, self.model_info.dtype, self.device, mc.max_model_len, num_device,
                    engine_args.block_size, num_device * engine_args.block_size,
                    self.max_concurrency(), num_cpu)

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs) -> "LLMEngine":
        return cls(engine_args)

    def max_concurrency(self) -> float:
        return self.num_device_blocks * self.args.block_size / self.model_config.max_model_len

    # ---------------------------------------------------------------- requests
    def add_request(self, request_id: str, prompt, params: SamplingParams,
                    arrival_time: Optional[float] = None, priority: int = 0) -> None:
        """Validate (ValueError on bad input) and queue a request."""
        req = self.input_processor.process(request_id, prompt, params, arrival_time)
        self.add_processed_request(req, priority)

    def make_request(self, request_id: str, prompt, params: SamplingParams,
                     arrival_time: Optional[float] = None) -> RequestState:
        """Thread-safe validation + tokenization (used by the async engine off the loop thread)."""
        return self.input_processor.process(request_id, prompt, params, arrival_time)

    def add_processed_request(self, req: RequestState, priority: int = 0) -> None:
        if req.request_id in self.requests:
            raise ValueError(f"request_id {req.request_id!r} is already in use")
        req.internal_id = next(self._ids)
        seq = SeqState(seq_id=next(self._ids), index=0)
        self._init_seq(req, seq, copy_from=None)
        req.seqs.append(seq)
        req.pending_fork = req.num_seqs_total > 1 and not req.is_beam
        if req.is_beam:
            p = req.params
            req.beam = BeamState(width=req.num_seqs_total, length_penalty=p.length_penalty,
                                 early_stopping=p.early_stopping)
        self.scheduler.add_request(req.internal_id, seq.seq_id,
                                   np.asarray(req.prompt_token_ids, dtype=np.int32),
                                   req.arrival_time, priority, 0, req.params.prompt_logprobs is None)
        self.requests[req.request_id] = req
        self._seqs[seq.seq_id] = (req, seq)
        if not _pipelinable(req):
            self._num_unpipelinable += 1

    def _init_seq(self, req: RequestState, seq: SeqState, copy_from: Optional[SeqState]) -> None:
        p = req.params
        if p.logprobs is not None:
            seq.logprobs = list(copy_from.logprobs) if copy_from and copy_from.logprobs else []
        if copy_from is not None:
            seq.output_token_ids = list(copy_from.output_token_ids)
            seq.cumulative_logprob = copy_from.cumulative_logprob
        if self.tokenizer is not None and p.detokenize and not req.is_beam:
            seq.detokenizer = IncrementalDetokenizer(self.tokenizer, req.prompt_token_ids,
                                                     skip_special_tokens=p.skip_special_tokens,
                                                     spaces_between_special_tokens=
                                                     p.spaces_between_special_tokens)
        if not req.is_beam:
            seq.slot = self._take_slot()
            params = p
            if p.seed is not None and seq.index > 0:
                # Each of the n samples draws its own stream; still reproducible per request.
                params = p.clone()
                params.seed = p.seed + seq.index
            self.sampling_state.add(seq.slot, params, req.prompt_token_ids, seq.output_token_ids)

    def _take_slot(self) -> int:
        if not self._free_slots:
            # More requests queued than slots: double the sampling state (slots are taken
            # when a request is added, not when it is scheduled).
            old, new = self._slots_capacity, 2 * self._slots_capacity
            self.sampling_state.grow(new)
            self._slots_capacity = new
            self._free_slots = list(range(new - 1, old - 1, -1))
        return self._free_slots.pop()

    def abort_request(self, request_id: Union[str, Iterable[str]]) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        for rid in ids:
            req = self.requests.pop(rid, None)
            if req is None:
                continue
            self.scheduler.abort_request(req.internal_id)
            for seq in req.seqs:
                self._release_seq(seq)
            req.finished = req.aborted = True
            if not _pipelinable(req):
                self._num_unpipelinable -= 1
            self.metrics.request_finished("abort")

    def _release_seq(self, seq: SeqState) -> None:
        self._seqs.pop(seq.seq_id, None)
        if seq.slot >= 0:
            self.sampling_state.remove(seq.slot)
            self._free_slots.append(seq.slot)
            seq.slot = -1

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def get_num_unfinished_requests(self) -> int:
        return len(self.requests)

    # ---------------------------------------------------------------- step
    def step(self) -> list[RequestOutput]:
        """One engine step; returns the outputs of the requests it advanced. With async
        scheduling the step returns the outputs of the step before it (its own tokens are
        still on the device)."""
        if self.async_scheduling and self._num_unpipelinable == 0:
            return self._step_pipelined()
        outs = self._finish_inflight() if self._inflight is not None else []
        return outs + self._step_sync()

    def _step_sync(self) -> list[RequestOutput]:
        plan = self.scheduler.schedule()
        n = plan.num_seqs
        if n == 0:
            self.runner.execute(plan, np.empty(0, dtype=np.int64))  # swaps only, if any
            self._update_stats(0, 0)
            return []
        seq_ids = np.asarray(plan.seq_ids)
        qsl = np.asarray(plan.query_start_loc)
        sample_pos = np.flatnonzero(np.asarray(plan.do_sample))
        now = time.time()

        normal, normal_rows, beams, beam_rows = [], [], {}, []
        for pos, sid in zip(sample_pos.tolist(), seq_ids[sample_pos].tolist()):
            req, seq = self._seqs[sid]
            row = int(qsl[pos + 1] - 1)
            if req.is_beam:
                beams.setdefault(req.request_id, (req, []))[1].append(seq)
                beam_rows.append(row)
            elif req.pending_fork:
                req.pending_fork = False
                for child in [seq] + self._fork_children(req, seq):
                    normal.append((req, child))
                    normal_rows.append(row)
            else:
                normal.append((req, seq))
                normal_rows.append(row)
        prompt_rows, prompt_jobs = self._prompt_logprob_rows(plan, seq_ids, qsl, now)

        rows = np.asarray(normal_rows + beam_rows + prompt_rows, dtype=np.int64)
        logits = self.runner.execute(plan, rows)
        n_normal, n_beam = len(normal_rows), len(beam_rows)

        touched: dict[str, RequestState] = {}
        upd_ids: list = []
        upd_tokens: list = []
        if normal:
            self._process_samples(normal, logits[:n_normal], touched, upd_ids, upd_tokens)
        if beams:
            self._process_beams(list(beams.values()), logits[n_normal:n_normal + n_beam], touched,
                                upd_ids, upd_tokens)
        if prompt_jobs:
            self._process_prompt_logprobs(prompt_jobs, logits[n_normal + n_beam:], touched)
        if upd_ids:
            self.scheduler.update(np.asarray(upd_ids, dtype=np.int64),
                                  np.asarray(upd_tokens, dtype=np.int32))
        self._update_stats(int(qsl[plan.num_prefill_seqs]), len(normal) + n_beam)
        return self._collect_outputs(touched)

    # ---------------------------------------------------------------- pipelined step
    def _step_pipelined(self) -> list[RequestOutput]:
        """Schedule and launch step k, then process step k-1's tokens while the device runs k.

        Every sequence sampled in k-1 got a placeholder token in the scheduler; the runner
        takes its real value from k-1's sampled tokens on the device. Only token-valued stops
        (EOS, stop ids/strings) are learned late: such a sequence has one wasted row in k.
        Length stops are known at sampling time and release the sequence at once.
        """
        plan = self.scheduler.schedule()
        prev, self._inflight = self._inflight, None
        if plan.num_seqs == 0:
            self.runner.execute(plan, np.empty(0, dtype=np.int64))  # swaps only, if any
            outs = self._finish_inflight(prev) if prev is not None else []
            self._update_stats(0, 0)
            return outs
        seq_ids = np.asarray(plan.seq_ids)
        qsl = np.asarray(plan.query_start_loc)
        sample_pos = np.flatnonzero(np.asarray(plan.do_sample))
        self._prompt_logprob_rows(plan, seq_ids, qsl, time.time())  # first_scheduled_time
        normal = [self._seqs[sid] for sid in seq_ids[sample_pos].tolist()]
        rows = (qsl[sample_pos + 1] - 1).astype(np.int64)
        input_fix = None
        if prev is not None and prev.row_of_seq:
            seq_lens = np.asarray(plan.seq_lens)
            fix_pos, fix_rows = [], []
            for i, sid in enumerate(seq_ids.tolist()):
                r = prev.row_of_seq.get(sid)
                # the chunk reaches the placeholder (always for decodes; a recompute
                # prefill only in its last chunk)
                if r is not None and int(seq_lens[i]) == prev.len_of_seq[sid]:
                    fix_pos.append(int(qsl[i + 1]) - 1)
                    fix_rows.append(r)
            if fix_pos:
                input_fix = (np.asarray(fix_pos, dtype=np.int64), prev.token_ids,
                             np.asarray(fix_rows, dtype=np.int64))
        logits = self.runner.execute(plan, rows, input_fix=input_fix)
        # the device runs step k; the host finishes step k-1 meanwhile
        outs = self._finish_inflight(prev) if prev is not None else []
        if not normal:  # only prefill chunks that sample nothing
            self._update_stats(int(qsl[plan.num_prefill_seqs]), 0)
            return outs
        slot_list = [s.slot for _, s in normal]
        out = self.sampler.sample(logits, self.runner.index_tensor(slot_list), self.sampling_state,
                                  slot_list)
        row_of_seq, len_of_seq, ph_ids = {}, {}, []
        max_len = self.model_config.max_model_len
        for i, (req, seq) in enumerate(normal):
            if seq.finished or req.finished:
                continue  # stopped in k-1: this row is discarded
            n_after = len(seq.output_token_ids) + 1
            total = len(req.prompt_token_ids) + n_after
            if n_after >= req.max_tokens or total >= max_len:
                self.scheduler.finish_seq(seq.seq_id)
                seq.sched_released = True
            else:
                ph_ids.append(seq.seq_id)
                row_of_seq[seq.seq_id] = i
                len_of_seq[seq.seq_id] = total
        if ph_ids:
            self.scheduler.append_placeholders(np.asarray(ph_ids, dtype=np.int64))
        self._inflight = InFlightStep.launch(normal, out, row_of_seq, len_of_seq)
        self._update_stats(int(qsl[plan.num_prefill_seqs]), 0)
        return outs

    def _finish_inflight(self, step: Optional["InFlightStep"] = None) -> list[RequestOutput]:
        """Process a launched step's sampled tokens (waits for them)."""
        if step is None:
            step, self._inflight = self._inflight, None
        tokens, lps, top = step.host_values()
        proc = self.output_processor
        touched: dict[str, RequestState] = {}
        fix_ids, fix_tokens, cont_slots, cont_tokens = [], [], [], []
        generated = 0
        for i, (req, seq) in enumerate(step.normal):
            if seq.finished or req.finished:
                continue
            tok = tokens[i]
            t = (top[0][i], top[1][i], top[2][i]) if top is not None and seq.logprobs is not None \
                else None
            proc.append_token(req, seq, tok, lps[i] if lps is not None else 0.0, t)
            generated += 1
            self._observe_token(req)
            touched[req.request_id] = req
            if seq.seq_id in step.row_of_seq:
                fix_ids.append(seq.seq_id)
                fix_tokens.append(tok)
            if seq.finished:
                self._finish_seq(req, seq)
            else:
                cont_slots.append(seq.slot)
                cont_tokens.append(tok)
        if fix_ids:  # finished sequences are skipped by the scheduler
            self.scheduler.set_last_tokens(np.asarray(fix_ids, dtype=np.int64),
                                           np.asarray(fix_tokens, dtype=np.int32))
        if cont_slots:
            self.sampling_state.append_tokens(np.asarray(cont_slots, dtype=np.int64),
                                              np.asarray(cont_tokens, dtype=np.int64))
        self._update_stats(0, generated)
        return self._collect_outputs(touched)

    def _fork_seq(self, req: RequestState, parent: SeqState, index: int) -> SeqState:
        """A child sequence sharing the parent's blocks (copy-on-write) and its tokens."""
        child = SeqState(seq_id=next(self._ids), index=index)
        self.scheduler.fork(parent.seq_id, child.seq_id)
        child.output_token_ids = list(parent.output_token_ids)
        req.seqs.append(child)
        self._seqs[child.seq_id] = (req, child)
        return child

    def _fork_children(self, req: RequestState, parent: SeqState) -> list:
        children = []
        for index in range(1, req.num_seqs_total):
            child = self._fork_seq(req, parent, index)
            self._init_seq(req, child, copy_from=parent)
            children.append(child)
        return children

    def _prompt_logprob_rows(self, plan, seq_ids, qsl, now):
        rows, jobs = [], []
        ctx = np.asarray(plan.context_lens)
        ntok = np.asarray(plan.num_tokens)
        for pos in range(int(plan.num_prefill_seqs)):
            req, seq = self._seqs[int(seq_ids[pos])]
            if req.metrics.first_scheduled_time is None:
                req.metrics.first_scheduled_time = now
            if req.prompt_logprobs_done or seq.index != 0:
                continue
            plen = len(req.prompt_token_ids)
            first, last = int(ctx[pos]), min(int(ctx[pos] + ntok[pos]), plen - 1)
            if last > first:  # positions p predict prompt token p+1
                start = int(qsl[pos]) + 0
                jobs.append((req, first, last, len(rows)))
                rows.extend(range(start, start + (last - first)))
            if ctx[pos] + ntok[pos] >= plen:
                req.prompt_logprobs_done = True
        return rows, jobs

    def _process_prompt_logprobs(self, jobs, logits, touched) -> None:
        for req, first, last, off in jobs:
            k = req.params.prompt_logprobs
            targets = torch.tensor(req.prompt_token_ids[first + 1:last + 1], dtype=torch.int64)
            res = compute_prompt_logprobs(logits[off:off + (last - first)], targets.to(logits.device), k)
            for i, entry in enumerate(self.output_processor.prompt_logprob_dicts(res, targets, k)):
                req.prompt_logprobs[first + 1 + i] = entry
            touched[req.request_id] = req

    def _process_samples(self, normal, logits, touched, upd_ids, upd_tokens) -> None:
        slot_list = [s.slot for _, s in normal]
        out = self.sampler.sample(logits, self.runner.index_tensor(slot_list), self.sampling_state,
                                  slot_list)
        tokens = out.token_ids.tolist()
        lps = out.logprobs.tolist()
        has_top = out.topk_ids is not None
        if has_top:
            top_ids, top_lps = out.topk_ids.tolist(), out.topk_logprobs.tolist()
            ranks = out.ranks.tolist()
        proc = self.output_processor
        cont_slots, cont_tokens = [], []
        for i, (req, seq) in enumerate(normal):
            tok = tokens[i]
            top = (top_ids[i], top_lps[i], ranks[i]) if has_top and seq.logprobs is not None else None
            proc.append_token(req, seq, tok, lps[i], top)
            self._observe_token(req)
            touched[req.request_id] = req
            if seq.finished:
                self._finish_seq(req, seq)
            else:
                upd_ids.append(seq.seq_id)
                upd_tokens.append(tok)
                cont_slots.append(seq.slot)
                cont_tokens.append(tok)
        if cont_slots:
            self.sampling_state.append_tokens(np.asarray(cont_slots, dtype=np.int64),
                                              np.asarray(cont_tokens, dtype=np.int64))

    def _process_beams(self, groups, logits, touched, upd_ids, upd_tokens) -> None:
        logprobs = torch.log_softmax(logits, dim=-1)
        off = 0
        for req, seqs in groups:
            lp = logprobs[off:off + len(seqs)]
            off += len(seqs)
            p = req.params
            decision = step_beams(req.beam, seqs, lp, self.eos_token_id, p.ignore_eos, req.max_tokens,
                                  lambda L, req=req: len(req.prompt_token_ids) + L >= self.model_config
                                  .max_model_len)
            self._observe_token(req)
            touched[req.request_id] = req
            new_children = []
            for parent, token, val, reuse in decision.continue_beams:
                if reuse:
                    continue
                child = self._fork_seq(req, parent, len(req.seqs))
                new_children.append((child, token, val))
            for parent in decision.finished_parents:
                parent.finished = True
                self.scheduler.finish_seq(parent.seq_id)
                self._release_seq(parent)
            for parent, token, val, reuse in decision.continue_beams:
                if reuse:
                    new_children.append((parent, token, val))
            for seq, token, val in new_children:
                seq.output_token_ids.append(token)
                seq.cumulative_logprob = val
                upd_ids.append(seq.seq_id)
                upd_tokens.append(token)
            if decision.done:
                self._finish_beam_request(req)
            req.seqs = [s for s in req.seqs if not s.finished]

    def _finish_beam_request(self, req: RequestState) -> None:
        for seq in req.live_seqs():
            seq.finished = True
            self.scheduler.finish_seq(seq.seq_id)
            self._release_seq(seq)
        hyps = best_hypotheses(req.beam, req.params.n)
        results = []
        for i, h in enumerate(hyps):
            text = ""
            if self.tokenizer is not None and req.params.detokenize:
                text = self.tokenizer.decode(h.token_ids, skip_special_tokens=req.params.skip_special_tokens)
            results.append(CompletionOutput(index=i, text=text, token_ids=list(h.token_ids),
                                            cumulative_logprob=h.cumulative_logprob, logprobs=None,
                                            finish_reason=h.finish_reason, stop_reason=None))
        req.beam.results = results
        self._finish_request(req, results[0].finish_reason if results else "length")

    def _finish_seq(self, req: RequestState, seq: SeqState) -> None:
        if not seq.sched_released:
            self.scheduler.finish_seq(seq.seq_id)
            seq.sched_released = True
        self._release_seq(seq)
        if all(s.finished for s in req.seqs) and not req.pending_fork:
            self._finish_request(req, seq.finish_reason)

    def _finish_request(self, req: RequestState, reason: str) -> None:
        req.finished = True
        if not _pipelinable(req):
            self._num_unpipelinable -= 1
        req.metrics.finished_time = time.time()
        self.requests.pop(req.request_id, None)
        reason = reason or "stop"
        self.metrics.request_finished(reason)
        totals = self._stats.request_success_total
        totals[reason] = totals.get(reason, 0) + 1
        self.metrics.e2e_request_latency_seconds.observe(req.metrics.finished_time - req.arrival_time)

    def _observe_token(self, req: RequestState) -> None:
        prev_first, prev_last = req.metrics.first_token_time, req.metrics.last_token_time
        req.mark_token_time()
        if prev_first is None:
            self.metrics.time_to_first_token_seconds.observe(req.metrics.first_token_time - req.arrival_time)
        else:
            self.metrics.inter_token_latency_seconds.observe(  # also exported as TPOT
                req.metrics.last_token_time - prev_last)

    def _collect_outputs(self, touched: dict) -> list:
        outs = []
        for req in touched.values():
            if req.finished or req.stream_outputs:
                outs.append(self.output_processor.make_output(req, final_order=req.finished))
        return outs

    # ---------------------------------------------------------------- stats
    def _update_stats(self, prompt_tokens: int, generated: int) -> None:
        s, st, m = self.scheduler, self._stats, self.metrics
        st.num_running, st.num_waiting, st.num_swapped = s.num_running(), s.num_waiting(), s.num_swapped()
        st.kv_cache_usage = s.device_usage()
        st.num_free_blocks = s.num_free_device_blocks()
        st.prefix_cache_hit_rate = s.prefix_cache_hit_rate()
        st.num_preemptions_total = s.num_preemptions()
        st.prompt_tokens_total += prompt_tokens
        st.generation_tokens_total += generated
        m.num_requests_running.set(st.num_running)
        m.num_requests_waiting.set(st.num_waiting)
        m.num_requests_swapped.set(st.num_swapped)
        m.kv_cache_usage_perc.set(st.kv_cache_usage)
        m.gpu_cache_usage_perc.set(st.kv_cache_usage)
        m.prefix_cache_hit_rate.set(st.prefix_cache_hit_rate)
        if prompt_tokens:
            m.prompt_tokens_total.inc(prompt_tokens)
        if generated:
            m.generation_tokens_total.inc(generated)
        m.set_preemptions(st.num_preemptions_total)

    def get_stats(self) -> EngineStats:
        self._update_stats(0, 0)
        st = self._stats
        return EngineStats(**{**st.__dict__, "request_success_total": dict(st.request_success_total)})
