"""The front end's half of the engine: validated requests in, RequestOutput snapshots out.

`EngineFrontend` turns prompts into EngineCoreRequests (InputProcessor) and the core's
per-step token outputs back into RequestOutputs: detokenization, stop strings, logprob
dicts, best_of ordering and metrics. The sync `LLMEngine` and the async engine both use
it; neither of them, nor this class, touches the scheduler or the model.
"""

from __future__ import annotations

import time
from typing import Iterable, Optional

import torch

from llmcore.engine.core_types import EngineCoreOutputs, EngineCoreRequest, SchedulerStats
from llmcore.engine.inputs import InputProcessor
from llmcore.engine.output_processor import OutputProcessor
from llmcore.engine.protocol import EngineStats, ServedModelInfo
from llmcore.engine.request import RequestState, SeqState
from llmcore.metrics import EngineMetrics
from llmcore.outputs import RequestOutput, make_position_logprobs
from llmcore.pooling_outputs import PoolingOutput, PoolingRequestOutput
from llmcore.tokenizer.detokenizer import IncrementalDetokenizer


class EngineFrontend:
    def __init__(self, tokenizer, model_info: ServedModelInfo, eos_token_id: Optional[int],
                 max_num_seqs: int, metrics: Optional[EngineMetrics] = None):
        self.tokenizer = tokenizer
        self.model_info = model_info
        self.eos_token_id = eos_token_id
        self.input_processor = InputProcessor(tokenizer, model_info, max_num_seqs=max_num_seqs)
        self.output_processor = OutputProcessor(tokenizer, eos_token_id, model_info.max_model_len)
        self.metrics = metrics or EngineMetrics(model_info.served_model_names[0])
        self.requests: dict[str, RequestState] = {}
        self.core_stats = SchedulerStats()
        self._success: dict[str, int] = {}
        # (request id, message) of requests the core refused; the caller drains it
        self.refused: list = []

    # ---------------------------------------------------------------- requests
    def make_request(self, request_id: str, prompt, params, arrival_time: Optional[float] = None
                     ) -> RequestState:
        """Validation + tokenization; thread-safe (reads only immutable engine facts)."""
        return self.input_processor.process(request_id, prompt, params, arrival_time)

    def register(self, req: RequestState, priority: int = 0) -> EngineCoreRequest:
        """Track `req`; the returned message goes to the core."""
        if req.request_id in self.requests:
            raise ValueError(f"request_id {req.request_id!r} is already in use")
        self.requests[req.request_id] = req
        return EngineCoreRequest(req.request_id, req.prompt_token_ids, req.params, req.max_tokens,
                                 req.arrival_time, priority, pooling_params=req.pooling_params)

    def abort(self, request_ids: Iterable[str]) -> list[str]:
        """Forget these requests; returns those that were live (to abort in the core)."""
        live = []
        for rid in request_ids:
            req = self.requests.pop(rid, None)
            if req is not None:
                req.finished = req.aborted = True
                self.metrics.request_finished("abort")
                live.append(rid)
        return live

    def fail(self, request_id: str) -> Optional[RequestState]:
        """The core refused a request it had accepted from us: stop tracking it."""
        return self.requests.pop(request_id, None)

    def _seq(self, req: RequestState, index: int) -> SeqState:
        while len(req.seqs) <= index:
            seq = SeqState(seq_id=-1, index=len(req.seqs))
            p = req.params
            if p.logprobs is not None:
                seq.logprobs = []
            if self.tokenizer is not None and p.detokenize:
                seq.detokenizer = IncrementalDetokenizer(
                    self.tokenizer, req.prompt_token_ids, skip_special_tokens=p.skip_special_tokens,
                    spaces_between_special_tokens=p.spaces_between_special_tokens)
            req.seqs.append(seq)
        return req.seqs[index]

    # ---------------------------------------------------------------- outputs
    def process(self, core_outputs: EngineCoreOutputs) -> tuple[list[RequestOutput], list[str]]:
        """(RequestOutputs of the requests advanced, request ids to abort in the core: those
        the front end finished — a stop string — while the core still runs them)."""
        if core_outputs.stats is not None:
            self._observe_stats(core_outputs.stats)
        touched: dict[str, RequestState] = {}   # requests to build an output for
        ended: dict[str, RequestState] = {}     # requests a sample of which ended this step
        to_abort: list[str] = []
        pooled: list[PoolingRequestOutput] = []
        proc = self.output_processor
        requests = self.requests
        for o in core_outputs.outputs:
            req = requests.get(o.request_id)
            if req is None:
                continue  # aborted or finished by a stop string meanwhile
            if req.pooling_params is not None:
                pooled.extend(self._pooled(req, o))
                continue
            if req.stream_outputs:
                touched[o.request_id] = req
            if o.error is not None:
                requests.pop(o.request_id, None)
                touched.pop(o.request_id, None)
                req.finished = True
                self.refused.append((o.request_id, o.error))
                continue
            if o.prompt_logprobs is not None:
                self._prompt_logprobs(req, o)
            if not o.new_token_ids:
                continue
            seq = self._seq(req, o.index)
            pl = o.new_logprobs
            lps = o.new_token_logprobs
            for j, tok in enumerate(o.new_token_ids):
                if seq.finished:
                    break
                top = None if pl is None else (pl.topk_ids[j], pl.topk_logprobs[j], pl.ranks[j])
                proc.append_token(req, seq, tok, lps[j], top)
                self._observe_token(req)
            if seq.finished:
                ended[o.request_id] = req
                if o.finish_reason is None:
                    # a stop string: the core runs the sample on otherwise
                    req.frontend_stopped = True
                    if req.num_seqs_total == 1:
                        to_abort.append(req.request_id)
            elif o.finish_reason is not None:
                # the core's token-valued stop (the same checks): trust it
                seq.finished, seq.finish_reason = True, o.finish_reason
                seq.stop_reason = o.stop_reason
                ended[o.request_id] = req
        for rid, req in ended.items():
            done = len(req.seqs) == req.num_seqs_total and all(s.finished for s in req.seqs)
            if done:
                self._finish_request(req)
                touched[rid] = req
                if req.frontend_stopped and req.num_seqs_total > 1:
                    to_abort.append(rid)
        outs = [proc.make_output(req, final_order=req.finished) for req in touched.values()]
        return outs + pooled, to_abort

    def _pooled(self, req: RequestState, o) -> list:
        """A pooling request's one output: its vector (or the core's refusal)."""
        self.requests.pop(req.request_id, None)
        req.finished = True
        if o.error is not None or o.pooled is None:
            self.refused.append((req.request_id, o.error or "the engine returned no embedding"))
            return []
        self._finish_request(req)
        data = torch.frombuffer(bytearray(o.pooled), dtype=torch.float32)
        return [PoolingRequestOutput(req.request_id, PoolingOutput(data), req.prompt_token_ids,
                                     True, req.prompt)]

    def _prompt_logprobs(self, req: RequestState, o) -> None:
        pl = o.prompt_logprobs
        k = req.params.prompt_logprobs
        for i, tid in enumerate(pl.token_ids):
            d = make_position_logprobs(tid, pl.logprobs[i], pl.ranks[i] if pl.ranks else None,
                                       pl.topk_ids[i] if pl.topk_ids else None,
                                       pl.topk_logprobs[i] if pl.topk_logprobs else None, k)
            req.prompt_logprobs[o.prompt_logprobs_start + i] = self.output_processor._with_text(d)

    def _finish_request(self, req: RequestState) -> None:
        req.finished = True
        req.metrics.finished_time = time.time()
        self.requests.pop(req.request_id, None)
        reason = next((s.finish_reason for s in reversed(req.seqs) if s.finish_reason), None)
        reason = reason or "stop"
        self.metrics.request_finished(reason)
        self._success[reason] = self._success.get(reason, 0) + 1
        self.metrics.e2e_request_latency_seconds.observe(req.metrics.finished_time - req.arrival_time)

    def _observe_token(self, req: RequestState) -> None:
        prev_first, prev_last = req.metrics.first_token_time, req.metrics.last_token_time
        req.mark_token_time()
        if prev_first is None:
            self.metrics.time_to_first_token_seconds.observe(req.metrics.first_token_time - req.arrival_time)
        else:
            self.metrics.inter_token_latency_seconds.observe(  # also exported as TPOT
                req.metrics.last_token_time - prev_last)

    # ---------------------------------------------------------------- stats
    def _observe_stats(self, st: SchedulerStats) -> None:
        prev, m = self.core_stats, self.metrics
        self.core_stats = st
        m.num_requests_running.set(st.num_running)
        m.num_requests_waiting.set(st.num_waiting)
        m.num_requests_swapped.set(st.num_swapped)
        m.kv_cache_usage_perc.set(st.kv_cache_usage)
        m.gpu_cache_usage_perc.set(st.kv_cache_usage)
        m.prefix_cache_hit_rate.set(st.prefix_cache_hit_rate)
        if st.prompt_tokens_total > prev.prompt_tokens_total:
            m.prompt_tokens_total.inc(st.prompt_tokens_total - prev.prompt_tokens_total)
        if st.generation_tokens_total > prev.generation_tokens_total:
            m.generation_tokens_total.inc(st.generation_tokens_total - prev.generation_tokens_total)
        m.set_preemptions(st.num_preemptions_total)

    def get_stats(self, core_stats: Optional[SchedulerStats] = None) -> EngineStats:
        if core_stats is not None:
            self._observe_stats(core_stats)
        st = self.core_stats
        # EngineStats = the core's SchedulerStats + the front end's finish counts
        return EngineStats(**{f: getattr(st, f) for f in SchedulerStats.__struct_fields__},
                           request_success_total=dict(self._success))

