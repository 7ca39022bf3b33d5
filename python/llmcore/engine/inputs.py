"""Validation and tokenization of prompts: everything that can be checked before a
request reaches the scheduler. Thread-safe (reads only immutable engine facts)."""

from __future__ import annotations

import time
from typing import Optional, Union

from llmcore.config.pooler_config import check_task
from llmcore.engine.protocol import ServedModelInfo
from llmcore.engine.request import RequestState
from llmcore.pooling_params import PoolingParams
from llmcore.sampling_params import SamplingParams
from llmcore.structured_output.spec import spec_from_params


class InputProcessor:
    def __init__(self, tokenizer, model_info: ServedModelInfo, max_num_seqs: int):
        self.tokenizer = tokenizer
        self.info = model_info
        self.max_num_seqs = max_num_seqs

    def tokenize_prompt(self, prompt) -> tuple[Optional[str], list]:
        """(text or None, token ids) from a str, a list of ids, or a dict."""
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return prompt.get("prompt"), self._check_ids(prompt["prompt_token_ids"])
            if "prompt" in prompt:
                prompt = prompt["prompt"]
            else:
                raise ValueError("prompt: a dict prompt needs 'prompt' or 'prompt_token_ids'")
        if isinstance(prompt, str):
            if prompt == "":
                raise ValueError("prompt: the prompt is empty")
            if self.tokenizer is None:
                raise ValueError("prompt: text prompts need a tokenizer (skip_tokenizer_init is set); "
                                 "pass token ids")
            return prompt, self.tokenizer.encode(prompt)
        if isinstance(prompt, (list, tuple)):
            return None, self._check_ids(prompt)
        raise ValueError(f"prompt: expected str, list of token ids or dict, got {type(prompt).__name__}")

    def _check_ids(self, ids) -> list:
        ids = list(ids)
        vocab = self.info.vocab_size
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, int):
                raise ValueError(f"prompt_token_ids: token ids must be integers, got {t!r}")
            if not 0 <= t < vocab:
                raise ValueError(f"prompt_token_ids: token id {t} is out of the vocabulary [0, {vocab})")
        return ids

    def add_model_eos_ids(self, params: SamplingParams) -> SamplingParams:
        """The generation config's EOS ids other than the tokenizer's (which the engine
        checks itself) stop the request like its own stop_token_ids (stop_reason = the id,
        as vLLM v0), unless ignore_eos; all of them join the min_tokens ban
        (_all_stop_token_ids). A clone when anything is added: the caller's object (shared
        by LLM.generate across prompts) is left alone."""
        primary = getattr(self.tokenizer, "eos_token_id", None) if self.tokenizer else None
        extra = [t for t in (getattr(self.info, "eos_token_ids", None) or ())
                 if t != primary and 0 <= t < self.info.vocab_size]
        # No tokenizer: every id goes in the stop set (the engine's own EOS check, on the
        # config's eos_token_id, comes first in check_stop, so a duplicate changes nothing).
        if not extra:
            return params
        if set(extra) <= params.all_stop_token_ids and (
                params.ignore_eos or set(extra) <= set(params.stop_token_ids)):
            return params
        params = params.clone()
        params.update_from_generation_config({"eos_token_id": extra}, primary)
        return params

    def process(self, request_id: str, prompt, params: Union[SamplingParams, PoolingParams],
                arrival_time: Optional[float] = None) -> RequestState:
        """A generation request (SamplingParams) or, on an embedding model, a pooling request
        (PoolingParams); ValueError on bad input or a request the model does not serve."""
        if isinstance(params, PoolingParams):
            return self.process_pooling(request_id, prompt, params, arrival_time)
        if not isinstance(params, SamplingParams):
            raise ValueError(f"sampling_params: expected SamplingParams, got {type(params).__name__}")
        check_task(self.info.task, pooling=False)
        text, ids = self.tokenize_prompt(prompt)
        if len(ids) == 0:
            raise ValueError("prompt: the prompt is empty")
        max_len = self.info.max_model_len
        if len(ids) > max_len:
            raise ValueError(f"prompt: the prompt has {len(ids)} tokens, more than the maximum model "
                             f"length of {max_len}")
        max_lp = self.info.max_logprobs
        if params.logprobs is not None and params.logprobs > max_lp:
            raise ValueError(f"logprobs: {params.logprobs} is more than --max-logprobs ({max_lp})")
        if params.prompt_logprobs is not None and params.prompt_logprobs > max_lp:
            raise ValueError(f"prompt_logprobs: {params.prompt_logprobs} is more than --max-logprobs "
                             f"({max_lp})")
        total = params.best_of if params.best_of is not None else params.n
        if total > self.max_num_seqs:
            raise ValueError(f"n: {total} sequences per request exceed --max-num-seqs ({self.max_num_seqs})")
        vocab = self.info.vocab_size
        for ids_field in ("stop_token_ids",):
            for t in getattr(params, ids_field) or []:
                if not 0 <= int(t) < vocab:
                    raise ValueError(f"{ids_field}: token id {t} is out of the vocabulary [0, {vocab})")
        for t in (params.logit_bias or {}):
            if not 0 <= int(t) < vocab:
                raise ValueError(f"logit_bias: token id {t} is out of the vocabulary [0, {vocab})")
        if params.guided_decoding is not None:
            if params.use_beam_search:
                raise ValueError("guided_decoding is not supported with use_beam_search")
            spec_from_params(params.guided_decoding)  # ValueError naming the field, before queueing
        params = self.add_model_eos_ids(params)
        max_tokens = params.max_tokens if params.max_tokens is not None else max_len - len(ids)
        max_tokens = max(1, max_tokens)
        req = RequestState(request_id=str(request_id), internal_id=-1, prompt=text,
                           prompt_token_ids=ids, params=params, max_tokens=max_tokens,
                           arrival_time=arrival_time if arrival_time is not None else time.time())
        req.is_beam = bool(params.use_beam_search)
        if params.prompt_logprobs is not None:
            req.prompt_logprobs = [None] * len(ids)
            req.prompt_logprobs_done = False
        return req

    def process_pooling(self, request_id: str, prompt, params: PoolingParams,
                        arrival_time: Optional[float] = None) -> RequestState:
        """An embedding request: the prompt may fill the whole context (nothing is generated)."""
        check_task(self.info.task, pooling=True)
        params.verify(self.info.hidden_size)
        text, ids = self.tokenize_prompt(prompt)
        if len(ids) == 0:
            raise ValueError("prompt: the prompt is empty")
        max_len = self.info.max_model_len
        if len(ids) > max_len:
            raise ValueError(f"prompt: the prompt has {len(ids)} tokens, more than the maximum model "
                             f"length of {max_len}")
        return RequestState(request_id=str(request_id), internal_id=-1, prompt=text,
                            prompt_token_ids=ids, params=None, max_tokens=0,
                            arrival_time=arrival_time if arrival_time is not None else time.time(),
                            pooling_params=params)
