"""Turns the scheduler's plan into tensors, runs the model over the paged KV cache and
samples: `execute_model(StepInput) -> PendingRunnerOutput` (host token ids + logprobs).

The runner owns the persistent per-sequence sampling state (a slot per live sequence,
written once when the sequence arrives) and, with async scheduling, the previous step's
sampled tokens on the device, which become inputs of the next step without a host trip.

The plan's arrays come from C++ as numpy views; each becomes a tensor with one copy at
most and no per-sequence Python loop.

Pipeline parallelism (pp_group given, more than one stage): every stage runs every step
with the same plan. A stage other than the first receives the hidden states and residual
from the previous one; a stage other than the last sends them on and answers an empty
output; the last stage computes the logits and samples. With async scheduling the last
stage sends the sampled ids to stage 0, which needs them as the next step's inputs.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch

from llmcore.config.engine_config import CacheConfig, EngineConfig
from llmcore.layers.attention.metadata import AttentionMetadata
from llmcore import ops
from llmcore.model_runner.grammar_mask import HostMaskChannel, MaskTicket, sync_debug_error
from llmcore.model_runner.kv_cache import GiB, KVCache, KVCacheSpec
from llmcore.model_runner.pooler import Pooler
from llmcore.model_runner.step_io import PendingRunnerOutput, StepInput
from llmcore.sampling import Sampler, SamplingBatchState, compute_prompt_logprobs
from llmcore.structured_output.backend import bitmask_width
from llmcore.structured_output.bitmask import apply_token_bitmask_

logger = logging.getLogger(__name__)


def _tensor(a: np.ndarray, device: torch.device, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    return t.to(device, non_blocking=True) if device.type != "cpu" else t


class ModelRunner:
    def __init__(self, model: torch.nn.Module, config: EngineConfig, eos_token_id=None,
                 pp_group=None):
        self.model = model
        # llmcore.distributed.PipelineGroup; None: one stage
        self.pp = pp_group if pp_group is not None and pp_group.size > 1 else None
        self.model_config = model_config = config.model_config
        self.cache_config = cache_config = config.cache_config
        self.device = device = config.device
        kv_dtype = cache_config.kv_torch_dtype(model_config.dtype)
        # a pipeline stage caches its own layers only
        self.kv_spec = KVCacheSpec(num_layers=getattr(model, "num_layers",
                                                      model_config.num_layers),
                                   num_kv_heads=config.num_kv_heads_per_rank(),
                                   head_dim=model_config.head_dim,
                                   block_size=cache_config.block_size, dtype=kv_dtype)
        self.kv_cache: Optional[KVCache] = None
        self.graph_runner = None
        self.profile_peak_bytes: Optional[int] = None
        # Sampling: cumulative logprobs are always reported (and rank best_of samples).
        self.sampler = Sampler(always_compute_logprobs=True)
        self._slots_capacity = max(2 * cache_config.max_num_seqs, 64)
        self.sampling_state = SamplingBatchState(self._slots_capacity, model_config.vocab_size,
                                                 model_config.max_model_len, device,
                                                 eos_token_id=eos_token_id, seed=config.seed)
        self._free_slots = list(range(self._slots_capacity - 1, -1, -1))
        self._slot_of: dict[int, int] = {}       # seq_id -> sampling slot
        # async scheduling: the previous step's samples (device) and where each seq's is
        self._prev_tokens: Optional[torch.Tensor] = None
        self._prev_row_of_seq: dict[int, int] = {}
        self._prev_len_of_seq: dict[int, int] = {}
        self._prev_pending = None   # stage 0 of a pipeline: PendingTokens from the last stage
        # awaiting sample_deferred: (StepInput, logits, pooled), or (MaskTicket, pending) when
        # the sampling is queued behind the mask already (GPU)
        self._deferred = None
        self._mask_channel: Optional[HostMaskChannel] = None
        self._mask_channel_kinds: set = set()   # (random rows?, rows 0..n-1?) sampled once
        so = getattr(config, "structured_output_config", None)
        self._overlap_mask_wait = bool(so is not None and so.overlap_mask_wait)
        self.pooler = Pooler()          # embeddings (--task embed): partial pools per sequence

    # ------------------------------------------------------------------ sizing
    def determine_num_blocks(self) -> tuple[int, int]:
        """(device blocks, cpu swap blocks)."""
        cc = self.cache_config
        per_block = self.kv_spec.bytes_per_block
        if cc.num_gpu_blocks_override is not None:
            num_device = cc.num_gpu_blocks_override
        elif self.device.type == "cpu":
            num_device = int(cc.cpu_kv_cache_space_gib * GiB // per_block)
        else:
            num_device = self._gpu_blocks_from_profile()
        num_cpu = int(cc.swap_space_gib * GiB // per_block)
        if num_device < 1:
            raise ValueError("no memory left for the KV cache: raise --gpu-memory-utilization or "
                             "lower --max-model-len")
        return num_device, num_cpu

    def _gpu_blocks_from_profile(self) -> int:
        """Run a max-size dummy step without a KV cache, measure the activation peak, and
        give the KV pool what is left of total * gpu_memory_utilization."""
        cc = self.cache_config
        dev = self.device
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        free, total = torch.cuda.mem_get_info(dev)
        used = total - free                      # weights, CUDA context, other processes
        self.profile_run()
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) - base
        self.profile_peak_bytes = peak
        torch.cuda.empty_cache()
        graph_reserve = 0 if (cc.enforce_eager or not self._graphs_possible()) else GiB // 2
        budget = total * cc.gpu_memory_utilization - used - peak - graph_reserve
        per_block = self.kv_spec.bytes_per_block
        logger.info("profile run: activation peak %.2f GiB, used %.2f GiB of %.2f GiB; "
                    "KV budget %.2f GiB", peak / GiB, used / GiB, total / GiB, max(budget, 0) / GiB)
        return int(max(0, budget) // per_block)

    @torch.inference_mode()
    def profile_run(self) -> None:
        """One prefill step of max_num_batched_tokens tokens (sequences of max_model_len)
        with empty KV caches, plus logits for up to max_num_seqs rows."""
        cc = self.cache_config
        L = self.model_config.max_model_len
        T = cc.max_num_batched_tokens or max(L, 2048)
        n_seqs = max(1, min(cc.max_num_seqs, -(-T // L) if T > L else 1))
        lens = [min(L, T - i * L) for i in range(-(-T // L))][:n_seqs] if T > L else [T]
        lens = [x for x in lens if x > 0]
        qsl = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
        T = int(qsl[-1])
        seq_lens = np.asarray(lens, dtype=np.int32)
        dev = self.device
        meta = AttentionMetadata(
            num_prefills=len(lens), num_prefill_tokens=T, num_decode_tokens=0,
            slot_mapping=torch.full((T,), -1, dtype=torch.int64, device=dev),
            seq_lens=torch.from_numpy(seq_lens).to(dev),
            context_lens=torch.zeros(len(lens), dtype=torch.int32, device=dev),
            query_start_loc=torch.from_numpy(qsl).to(dev),
            block_tables=torch.zeros((len(lens), 1), dtype=torch.int32, device=dev),
            max_query_len=int(seq_lens.max()), max_seq_len=int(seq_lens.max()),
            block_size=cc.block_size, seq_lens_host=seq_lens,
            context_lens_host=np.zeros(len(lens), dtype=np.int32), query_start_loc_host=qsl)
        input_ids = torch.zeros(T, dtype=torch.int64, device=dev)
        positions = torch.from_numpy(np.concatenate([np.arange(x) for x in lens])).to(dev)
        if self.pp is not None:   # each stage profiles alone: stand-in inputs, no messages
            hidden = self.model(input_ids, positions, [], meta, self._zero_intermediate(T))
            if not self.pp.is_last:
                return
        else:
            hidden = self.model(input_ids, positions, [], meta)
        rows = torch.arange(min(T, cc.max_num_seqs), device=dev) % T
        self.model.compute_logits(hidden.index_select(0, rows)).float()
        del hidden

    def _zero_intermediate(self, num_tokens: int):
        from llmcore.distributed.pipeline import IntermediateTensors
        h = torch.zeros((num_tokens, self.model_config.hidden_size),
                        dtype=self.model_config.dtype, device=self.device)
        return None if self.pp.is_first else IntermediateTensors(h, h.clone())

    def _graphs_possible(self) -> bool:
        if self.device.type != "cuda":
            return False
        from llmcore import ops
        return ops.cuda_available()

    def init_kv_cache(self, num_device_blocks: int, num_cpu_blocks: int) -> None:
        self.kv_cache = KVCache(self.kv_spec, num_device_blocks, num_cpu_blocks, self.device)
        if self._graphs_possible() and not self.cache_config.enforce_eager:
            from llmcore.model_runner.cuda_graph import DecodeGraphRunner
            stage_input = None
            if self.pp is not None and not self.pp.is_first:
                stage_input = (self.model_config.hidden_size, self.model_config.dtype)
            gr = DecodeGraphRunner(self.model, self.kv_cache.device_caches, self.device,
                                   self.cache_config.max_num_seqs,
                                   self.cache_config.max_seq_len_to_capture,
                                   self.cache_config.block_size, stage_input=stage_input)
            try:
                gr.capture()
                self.graph_runner = gr
            except Exception as e:  # pragma: no cover - depends on the device
                logger.warning("CUDA graph capture failed (%s); running eagerly", e)
                self.graph_runner = None

    # ------------------------------------------------------------------ step
    def build_metadata(self, plan) -> AttentionMetadata:
        dev = self.device
        qsl = np.asarray(plan.query_start_loc)
        n_prefill = int(plan.num_prefill_seqs)
        num_prefill_tokens = int(qsl[n_prefill])
        total = int(plan.num_batched_tokens)
        num_tokens = np.asarray(plan.num_tokens)
        seq_lens = np.asarray(plan.seq_lens)
        return AttentionMetadata(
            num_prefills=n_prefill,
            num_prefill_tokens=num_prefill_tokens,
            num_decode_tokens=total - num_prefill_tokens,
            slot_mapping=_tensor(plan.slot_mapping, dev, torch.int64),
            seq_lens=_tensor(seq_lens, dev),
            context_lens=_tensor(plan.context_lens, dev),
            query_start_loc=_tensor(qsl, dev),
            block_tables=_tensor(plan.block_tables, dev),
            max_query_len=int(num_tokens.max()) if len(num_tokens) else 0,
            max_seq_len=int(seq_lens.max()) if len(seq_lens) else 0,
            block_size=self.cache_config.block_size,
            seq_lens_host=seq_lens,
            context_lens_host=np.asarray(plan.context_lens),
            query_start_loc_host=qsl,
        )

    def index_tensor(self, values) -> torch.Tensor:
        """int64 indices on the device; from pinned memory without a stream sync on CUDA."""
        t = torch.as_tensor(np.asarray(values, dtype=np.int64))
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _rows_hidden(self, hidden: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        n = len(rows)
        if n == hidden.shape[0] and (n == 0 or (rows[0] == 0 and rows[-1] == n - 1
                                                and bool((np.diff(rows) == 1).all()))):
            return hidden  # every row, in order (decode-only steps)
        return hidden.index_select(0, self.index_tensor(rows))

    def _apply_input_fix(self, input_ids: torch.Tensor, input_fix) -> None:
        """input_ids[pos] = src[rows]: tokens sampled by the previous (still in flight) step."""
        if input_fix is None:
            return
        pos, src, rows = input_fix
        input_ids.index_copy_(0, self.index_tensor(pos),
                              src.index_select(0, self.index_tensor(rows)).to(input_ids.dtype))

    @torch.inference_mode()
    def execute(self, plan, logits_rows: np.ndarray, input_fix=None,
                hidden_out: Optional[list] = None) -> Optional[torch.Tensor]:
        """Run one step; returns float32 logits for `logits_rows` (indices into the step's
        tokens), None on a pipeline stage before the last. hidden_out: a list that receives
        the final hidden states of every token (pooling needs them; one stage only).

        input_fix: (positions, device tensor, rows): input_ids[positions] = tensor[rows], for
        tokens the scheduler only holds as placeholders (async scheduling)."""
        kv = self.kv_cache
        kv.swap_out(np.asarray(plan.blocks_to_swap_out))
        kv.swap_in(np.asarray(plan.blocks_to_swap_in))
        kv.copy_blocks(np.asarray(plan.blocks_to_copy))
        if plan.num_seqs == 0:
            return torch.empty((0, self.model_config.vocab_size), dtype=torch.float32)
        if self.pp is not None:
            return self._execute_stage(plan, logits_rows, input_fix)
        gr = self.graph_runner
        if gr is not None and gr.fits(plan):
            hidden = gr.run(plan, int(plan.num_seqs),
                            lambda ids: self._apply_input_fix(ids, input_fix))
        else:
            meta = self.build_metadata(plan)
            input_ids = _tensor(plan.input_ids, self.device, torch.int64)
            self._apply_input_fix(input_ids, input_fix)
            positions = _tensor(plan.positions, self.device, torch.int64)
            hidden = self.model(input_ids, positions, kv.device_caches, meta)
        if hidden_out is not None:
            hidden_out.append(hidden)
        return self.model.compute_logits(self._rows_hidden(hidden, logits_rows)).float()

    def _execute_stage(self, plan, logits_rows: np.ndarray, input_fix) -> Optional[torch.Tensor]:
        """One pipeline stage's part of the step: logits on the last stage, None elsewhere."""
        pp = self.pp
        intermediate = None
        if not pp.is_first:
            intermediate = pp.recv_intermediate(int(plan.num_batched_tokens),
                                                self.model_config.hidden_size,
                                                self.model_config.dtype, self.device)
        gr = self.graph_runner
        if gr is not None and gr.fits(plan):
            out = gr.run(plan, int(plan.num_seqs),
                         lambda ids: self._apply_input_fix(ids, input_fix), intermediate)
        else:
            meta = self.build_metadata(plan)
            input_ids = _tensor(plan.input_ids, self.device, torch.int64)
            if pp.is_first:
                self._apply_input_fix(input_ids, input_fix)
            positions = _tensor(plan.positions, self.device, torch.int64)
            out = self.model(input_ids, positions, self.kv_cache.device_caches, meta,
                             intermediate)
        if not pp.is_last:
            pp.send_intermediate(out)
            return None
        return self.model.compute_logits(self._rows_hidden(out, logits_rows)).float()

    # ------------------------------------------------------------------ sampling state
    def _add_seq(self, new) -> None:
        if not self._free_slots:
            # More sequences than slots: double the sampling state.
            old, cap = self._slots_capacity, 2 * self._slots_capacity
            self.sampling_state.grow(cap)
            self._slots_capacity = cap
            self._free_slots = list(range(cap - 1, old - 1, -1))
        slot = self._free_slots.pop()
        self._slot_of[new.seq_id] = slot
        self.sampling_state.add(slot, new.params, new.prompt_token_ids, new.output_token_ids)

    def _remove_seq(self, seq_id: int) -> None:
        slot = self._slot_of.pop(seq_id, None)
        if slot is not None:
            self.sampling_state.remove(slot)
            self._free_slots.append(slot)
        self._prev_row_of_seq.pop(seq_id, None)

    def num_live_seqs(self) -> int:
        return len(self._slot_of)

    def _device_token_fix(self, plan):
        """(positions, tensor, rows) for entries whose last input token is the previous
        step's sample: the chunk reaches the placeholder (always for decodes; a recompute
        prefill only in its last chunk)."""
        prev = self._prev_row_of_seq
        if not prev:
            return None
        qsl = np.asarray(plan.query_start_loc)
        seq_lens = np.asarray(plan.seq_lens)
        lens = self._prev_len_of_seq
        fix_pos, fix_rows = [], []
        for i, sid in enumerate(np.asarray(plan.seq_ids).tolist()):
            r = prev.get(sid)
            if r is not None and int(seq_lens[i]) == lens[sid]:
                fix_pos.append(int(qsl[i + 1]) - 1)
                fix_rows.append(r)
        if not fix_pos:
            return None
        if self._prev_pending is not None:   # pipeline stage 0: the last stage's samples
            self._prev_tokens = self._prev_pending.wait()
            self._prev_pending = None
        return (np.asarray(fix_pos, dtype=np.int64), self._prev_tokens,
                np.asarray(fix_rows, dtype=np.int64))

    def _remember_samples(self, step: StepInput) -> None:
        # next step, a sequence of this length + 1 ends in this step's sample
        self._prev_row_of_seq = {sid: i for i, sid in enumerate(step.sample_seq_ids)}
        self._prev_len_of_seq = dict(zip(step.sample_seq_ids,
                                         (step.sample_seq_lens + 1).tolist()))

    def _apply_grammar(self, logits: torch.Tensor, bitmask: np.ndarray, rows: np.ndarray) -> None:
        """Disallowed tokens of the constrained rows -> -inf, on the device, before sampling
        (and after any CUDA graph: the graph computes hidden states only)."""
        t = torch.from_numpy(bitmask)
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        apply_token_bitmask_(logits, t, self._grammar_row_index(rows))

    def _grammar_row_index(self, rows: np.ndarray) -> Optional[torch.Tensor]:
        """None for rows 0..n-1 (the mask applies to a view, no gather), else the rows as a
        device index."""
        return None if _rows_are_prefix(rows) else self.index_tensor(rows)

    # ------------------------------------------------------------------ one step
    @torch.inference_mode()
    def execute_model(self, step: StepInput) -> PendingRunnerOutput:
        """Forward + sampling for one step. The returned object's get() gives host values;
        with async scheduling the caller reads it after launching the next step. With
        step.defer_sampling only the forward runs; sample_deferred() samples."""
        for sid in step.finished_seq_ids:
            self._remove_seq(sid)
        for new in step.new_seqs:
            self._add_seq(new)
        plan = step.plan
        input_fix = self._device_token_fix(plan) if step.use_device_tokens else None
        if self._prev_pending is not None:   # unused (e.g. the sequences finished): drain it
            self._prev_pending.wait()
        self._prev_row_of_seq, self._prev_len_of_seq, self._prev_tokens = {}, {}, None
        self._prev_pending = None
        n_sample = len(step.sample_seq_ids)
        parts = [step.sample_rows] if step.sample_rows is not None and len(step.sample_rows) else []
        jobs = step.prompt_logprob_jobs
        if jobs:
            parts.append(np.concatenate([np.arange(j.row_start, j.row_start + (j.last - j.first))
                                         for j in jobs]).astype(np.int64))
        rows = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        hidden_out: Optional[list] = [] if step.pooling_jobs else None
        logits = self.execute(plan, rows, input_fix=input_fix, hidden_out=hidden_out)
        pooled = self.pooler.pool(hidden_out[0], step.pooling_jobs) if hidden_out else None
        if pooled is not None and len(rows) == 0:
            return PendingRunnerOutput({"pooled": pooled}, [])
        if logits is None:   # a pipeline stage before the last
            if self.pp.is_first and step.use_device_tokens and n_sample:
                self._prev_pending = self.pp.irecv_tokens_from_last(n_sample, self.device)
                self._remember_samples(step)
            return PendingRunnerOutput.empty()
        if plan.num_seqs == 0 or len(rows) == 0:
            return PendingRunnerOutput.empty()
        if step.defer_sampling:
            # guided rows whose mask needs the previous step's tokens: the engine sends it
            # (sample_deferred) while the device runs this forward
            early = self._launch_behind_mask(step, logits, pooled)
            self._deferred = early if early is not None else (step, logits, pooled)
            return PendingRunnerOutput.empty()
        return self._sample_step(step, logits, pooled)

    def _launch_behind_mask(self, step: StepInput, logits: torch.Tensor, pooled):
        """On a GPU, queue the sampling now, held on the device until the host publishes the
        mask (model_runner/grammar_mask.py); None where the sampling would sync the host (it
        then runs when the mask comes)."""
        if not self._overlap_mask_wait or self.device.type != "cuda" or not ops.cuda_available() \
                or step.grammar_rows is None \
                or not len(step.grammar_rows) or self.pp is not None or step.prompt_logprob_jobs:
            return None   # (prompt logprobs copy their targets with a sync)
        slots = [self._slot_of[sid] for sid in step.sample_seq_ids]
        if not self.sampler.launch_is_sync_free(self.sampling_state, slots):
            return None
        # CUDA loads a kernel at its first launch (lazy loading), which may wait for the
        # device to go idle: a first launch behind a held stream would wait for the host's
        # mask, which waits for it. The first step of each kind samples after the mask, so
        # every kernel the channel queues has been loaded before a hold.
        rows = step.grammar_rows
        random = self.sampling_state._random_slots
        kind = (any(sl in random for sl in slots), _rows_are_prefix(rows))
        if kind not in self._mask_channel_kinds:
            self._mask_channel_kinds.add(kind)
            return None
        if self._mask_channel is None:
            self._mask_channel = HostMaskChannel(self.device, bitmask_width(logits.shape[1]),
                                                 rows=max(64, len(step.grammar_rows)))
        ch = self._mask_channel
        n = len(rows)
        rows_t = self._grammar_row_index(rows)
        ticket = ch.launch(logits, rows_t, n)
        try:
            with sync_debug_error():
                pending = self._sample_step(step, logits, pooled, mask_applied=True)
        except RuntimeError:
            # a sync the sampler did not foresee: release the device (allow-all for this
            # ticket; the sampling it queued is discarded) and sample after the mask instead
            ch.abandon()
            logger.warning("guided sampling would sync the device; sampling after the mask",
                           exc_info=True)
            return None
        return ticket, pending

    @torch.inference_mode()
    def sample_deferred(self, grammar_bitmask: Optional[np.ndarray],
                        grammar_rows: Optional[np.ndarray]) -> PendingRunnerOutput:
        """Sampling of the step launched with defer_sampling, under this grammar mask."""
        deferred, self._deferred = self._deferred, None
        if isinstance(deferred[0], MaskTicket):    # queued already: hand the device the mask
            ticket, pending = deferred
            self._mask_channel.publish(ticket, grammar_bitmask)
            return pending
        step, logits, pooled = deferred
        step.grammar_bitmask, step.grammar_rows = grammar_bitmask, grammar_rows
        return self._sample_step(step, logits, pooled)

    def _sample_step(self, step: StepInput, logits: torch.Tensor,
                     pooled: Optional[torch.Tensor] = None,
                     mask_applied: bool = False) -> PendingRunnerOutput:
        n_sample = len(step.sample_seq_ids)
        jobs = step.prompt_logprob_jobs
        tensors: dict = {} if pooled is None else {"pooled": pooled}
        if mask_applied:   # the device reports a mask it stopped waiting for
            tensors["mask_timed_out"] = self._mask_channel.timed_out
        off = 0
        if n_sample:
            if step.grammar_bitmask is not None and not mask_applied:
                self._apply_grammar(logits, step.grammar_bitmask, step.grammar_rows)
            slots = [self._slot_of[sid] for sid in step.sample_seq_ids]
            slots_t = self.index_tensor(slots)
            out = self.sampler.sample(logits[:n_sample], slots_t, self.sampling_state, slots)
            # penalties count generated tokens: written on the device, no host trip
            self.sampling_state.append_tokens(slots_t, out.token_ids, in_vocab=True)
            tensors.update(token_ids=out.token_ids, logprobs=out.logprobs, topk_ids=out.topk_ids,
                           topk_logprobs=out.topk_logprobs, ranks=out.ranks)
            if step.use_device_tokens:
                if self.pp is not None:   # stage 0 builds the next inputs
                    self.pp.send_tokens_to_first(out.token_ids)
                else:
                    self._prev_tokens = out.token_ids
                    self._remember_samples(step)
            off = n_sample
        prompt = []
        for j in jobs:
            n = j.last - j.first
            targets = torch.tensor(j.targets, dtype=torch.int64).to(logits.device)
            prompt.append(compute_prompt_logprobs(logits[off:off + n], targets, j.k))
            off += n
        return PendingRunnerOutput(tensors, prompt)


def _rows_are_prefix(rows: np.ndarray) -> bool:
    """Sorted, distinct guided rows that are exactly 0..n-1."""
    return int(rows[0]) == 0 and int(rows[-1]) == len(rows) - 1
