"""After sampling: append tokens, detokenize incrementally, check stop conditions and
build RequestOutput snapshots."""

from __future__ import annotations

import time
from typing import Optional

from llmcore.engine.request import RequestState, SeqState
from llmcore.tokenizer.detokenizer import token_decoder
from llmcore.tokenizer.stop_checker import StopCheckResult, check_stop, streamable_text_len
from llmcore.outputs import CompletionOutput, RequestOutput, make_position_logprobs


class OutputProcessor:
    def __init__(self, tokenizer, eos_token_id: Optional[int], max_model_len: int):
        self.tokenizer = tokenizer
        self.eos_token_id = eos_token_id
        self.max_model_len = max_model_len
        # decoded_token of logprob entries (k + 1 per token when logprobs are requested)
        self._decode_one = token_decoder(tokenizer) if tokenizer is not None else None

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
                lp.decoded_token = self._decode_one(tid)
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
        n_out = len(seq.output_token_ids)
        result = check_stop(req.params, output_text=seq.text, new_char_count=new_text_len,
                            last_token_id=token_id, num_output_tokens=n_out,
                            num_total_tokens=len(req.prompt_token_ids) + n_out,
                            max_model_len=self.max_model_len, eos_token_id=self.eos_token_id)
        if result is None and n_out >= req.max_tokens:
            result = StopCheckResult("length")
        if result is not None:
            if result.truncate_to is not None:
                seq.text = seq.text[:result.truncate_to]
            seq.finished = True
            seq.finish_reason = result.finish_reason
            seq.stop_reason = result.stop_reason

    # ---------------------------------------------------------------- outputs
    @staticmethod
    def visible_text(req: RequestState, seq: SeqState) -> str:
        """Text safe to show: while running, hold back a tail that may start a stop string."""
        keep = streamable_text_len(seq.text, req.params, seq.finished)
        return seq.text[:max(seq.emitted_text_len, keep)]

    def make_output(self, req: RequestState, final_order: bool = False) -> RequestOutput:
        seqs = req.seqs
        n = req.params.n
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
