"""After sampling: append tokens, detokenize incrementally, check stop conditions and
build RequestOutput snapshots."""

from __future__ import annotations

import time
from typing import Optional

from llmcore.engine.request import RequestState, SeqState
from llmcore.outputs import CompletionOutput, RequestOutput, make_position_logprobs


class OutputProcessor:
    def __init__(self, tokenizer, eos_token_id: Optional[int], max_model_len: int):
        self.tokenizer = tokenizer
        self.eos_token_id = eos_token_id
        self.max_model_len = max_model_len

    # ---------------------------------------------------------------- per token
    def append_token(self, req: RequestState, seq: SeqState, token_id: int, logprob: float,
                     top: Optional[tuple]) -> None:
        """Record one sampled token; sets seq.finished / finish_reason when it stops.

        top: (topk_ids, topk_logprobs, rank) when logprobs were requested.
        """
        params = req.params
        seq.output_token_ids.append(token_id)
        seq.cumulative_logprob += logprob
        if seq.logprobs is not None:
            seq.logprobs.append(self._logprob_dict(token_id, logprob, top, params.logprobs))
        new_text = ""
        if seq.detokenizer is not None and params.detokenize:
            new_text = seq.detokenizer.append(token_id)
            seq.text = seq.detokenizer.text
        self._check_stop(req, seq, token_id, len(new_text))

    def _logprob_dict(self, token_id: int, logprob: float, top: Optional[tuple], k: int) -> dict:
        if top is None:
            d = make_position_logprobs(token_id, logprob, None)
        else:
            ids, lps, rank = top
            d = make_position_logprobs(token_id, logprob, rank, ids, lps, k)
        return self._with_text(d)

    def _with_text(self, d: dict) -> dict:
        if self.tokenizer is not None:
            for tid, lp in d.items():
                lp.decoded_token = self.tokenizer.decode([tid])
        return d

    def prompt_logprob_dicts(self, res, targets, k: int) -> list:
        """Per-position dicts for prompt tokens from compute_prompt_logprobs' result."""
        lps, top_ids, top_lps, ranks = (x.tolist() if x is not None else None for x in res)
        out = []
        for i, tid in enumerate(targets.tolist()):
            d = make_position_logprobs(tid, lps[i], ranks[i], top_ids[i] if top_ids else None,
                                       top_lps[i] if top_lps else None, k)
            out.append(self._with_text(d))
        return out

    def _check_stop(self, req: RequestState, seq: SeqState, token_id: int, new_text_len: int) -> None:
        params = req.params
        n_out = len(seq.output_token_ids)
        if n_out >= params.min_tokens:
            eos = not params.ignore_eos and token_id == self.eos_token_id
            if eos or (params.stop_token_ids and token_id in params.stop_token_ids):
                # As vLLM: the stop token's own text is not shown unless asked for.
                if new_text_len and not params.include_stop_str_in_output:
                    seq.text = seq.text[:-new_text_len]
                return self._finish(seq, "stop", None if eos else token_id)
            if params.stop and new_text_len > 0:
                hit = self._find_stop_string(seq.text, new_text_len, params.stop,
                                             params.include_stop_str_in_output)
                if hit is not None:
                    stop_str, cut = hit
                    seq.text = seq.text[:cut]
                    return self._finish(seq, "stop", stop_str)
        if n_out >= req.max_tokens:
            return self._finish(seq, "length", None)
        if len(req.prompt_token_ids) + n_out >= self.max_model_len:
            return self._finish(seq, "length", None)

    @staticmethod
    def _find_stop_string(text: str, new_len: int, stops: list, include: bool):
        best = None
        for s in stops:
            start = max(0, len(text) - new_len - len(s) + 1)
            i = text.find(s, start)
            if i != -1 and (best is None or i < best[1]):
                best = (s, i)
        if best is None:
            return None
        s, i = best
        return s, (i + len(s) if include else i)

    @staticmethod
    def _finish(seq: SeqState, reason: str, stop_reason) -> None:
        seq.finished = True
        seq.finish_reason = reason
        seq.stop_reason = stop_reason

    # ---------------------------------------------------------------- outputs
    @staticmethod
    def visible_text(req: RequestState, seq: SeqState) -> str:
        """Text safe to show: while running, hold back a tail that may start a stop string."""
        text = seq.text
        stops = req.params.stop
        if seq.finished or not stops:
            return text
        hold = max(len(s) for s in stops) - 1
        keep = max(seq.emitted_text_len, len(text) - hold)
        return text[:keep]

    def make_output(self, req: RequestState, final_order: bool = False) -> RequestOutput:
        seqs = req.seqs
        n = req.params.n
        if req.is_beam and req.beam is not None and req.beam.results is not None:
            completions = req.beam.results[:n]
        else:
            if final_order and len(seqs) > n:
                # best_of > n: return the n most likely by cumulative logprob
                seqs = sorted(seqs, key=lambda s: s.cumulative_logprob, reverse=True)[:n]
            else:
                seqs = seqs[:n]
            completions = []
            for i, s in enumerate(seqs):
                text = self.visible_text(req, s)
                s.emitted_text_len = len(text)
                completions.append(CompletionOutput(
                    index=i if final_order else s.index, text=text,
                    token_ids=list(s.output_token_ids), cumulative_logprob=s.cumulative_logprob,
                    logprobs=list(s.logprobs) if s.logprobs is not None else None,
                    finish_reason=s.finish_reason, stop_reason=s.stop_reason))
        if req.finished and req.metrics.finished_time is None:
            req.metrics.finished_time = time.time()
        return RequestOutput(request_id=req.request_id, prompt=req.prompt,
                             prompt_token_ids=req.prompt_token_ids,
                             prompt_logprobs=req.prompt_logprobs, outputs=completions,
                             finished=req.finished, metrics=req.metrics,
                             num_cached_tokens=req.num_cached_tokens)
