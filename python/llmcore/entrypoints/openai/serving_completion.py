"""POST /v1/completions."""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Optional

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from llmcore.entrypoints.openai.errors import APIError
from llmcore.entrypoints.openai.protocol import CompletionRequest, now
from llmcore.entrypoints.openai.serving_engine import (OpenAIServingBase, chain_first,
                                                       completion_logprobs, logger,
                                                       merge_generators, random_id,
                                                       run_until_disconnect, sse_stream,
                                                       StreamDeltas)


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


class _Prompt:
    __slots__ = ("text", "ids", "engine_prompt")

    def __init__(self, text: Optional[str], ids: list[int], engine_prompt: Any):
        self.text = text
        self.ids = ids
        self.engine_prompt = engine_prompt


class OpenAIServingCompletion(OpenAIServingBase):

    async def _prompts(self, request: CompletionRequest) -> list[_Prompt]:
        p = request.prompt
        if isinstance(p, str):
            raw: list = [p]
        elif isinstance(p, list) and p and all(isinstance(x, int) for x in p):
            raw = [p]
        elif isinstance(p, list):
            raw = list(p)
        else:  # pragma: no cover - pydantic restricts the type
            raise APIError("prompt must be a string, a list of strings, a list of token ids or a "
                           "list of lists of token ids", 400, param="prompt")
        if not raw:
            raise APIError("The prompt is empty.", 400, param="prompt")
        if len(raw) > self.config.max_num_seqs:
            raise APIError(f"at most {self.config.max_num_seqs} prompts per request", 400,
                           param="prompt")
        trunc = request.truncate_prompt_tokens
        if trunc is not None and trunc < 1:
            raise APIError("truncate_prompt_tokens must be >= 1", 400, param="truncate_prompt_tokens")
        out = []
        for item in raw:
            if isinstance(item, str):
                if item == "":
                    raise APIError("The prompt is empty.", 400, param="prompt")
                ids = await self.encode_async(item)
                text: Optional[str] = item
                truncated = trunc is not None and len(ids) > trunc
                if truncated:
                    ids = ids[-trunc:]
                    text = self.decode(ids)
                # the ids go along: the engine does not tokenize the text again
                engine_prompt: Any = ({"prompt_token_ids": ids} if truncated
                                      else {"prompt": item, "prompt_token_ids": ids})
            else:
                ids = list(item)
                if not ids:
                    raise APIError("The prompt is empty.", 400, param="prompt")
                self.check_token_ids(ids)
                if trunc is not None and len(ids) > trunc:
                    ids = ids[-trunc:]
                text = None
                engine_prompt = {"prompt_token_ids": ids}
            out.append(_Prompt(text, ids, engine_prompt))
        return out

    async def create_completion(self, request: CompletionRequest, raw_request: Request) -> Response:
        model_name = self.check_model(request.model)
        self.check_unsupported(request)
        if request.suffix:
            raise APIError("suffix is not supported", 400, param="suffix")
        prompts = await self._prompts(request)
        logprobs = request.logprobs
        prompt_logprobs = request.prompt_logprobs
        if request.echo and logprobs is not None:
            prompt_logprobs = max(prompt_logprobs or 0, logprobs)
        params = []
        priority = self.check_priority(request)
        for p in prompts:
            max_tokens = self.resolve_max_tokens(request, len(p.ids))
            params.append(self.sampling_params(request, max_tokens=max_tokens, logprobs=logprobs,
                                               prompt_logprobs=prompt_logprobs))
        request_id = f"cmpl-{random_id()}"
        rids = [f"{request_id}-{i}" for i in range(len(prompts))]
        for rid, p, sp in zip(rids, prompts, params):
            self.log_request(rid, p.engine_prompt, sp, user=request.user, priority=priority)
        created = now()

        results = await asyncio.gather(
            *(self.prime(p.engine_prompt, sp, rid, priority)
              for p, sp, rid in zip(prompts, params, rids)),
            return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.abort(*rids)
            raise errors[0]
        gens = [chain_first(first, gen) for first, gen in results]
        n = params[0].n if hasattr(params[0], "n") else (request.n or 1)

        if request.stream:
            return StreamingResponse(
                sse_stream(self._events(request, model_name, request_id, created, prompts, gens, n),
                           request_id, lambda: self.abort(*rids)),
                media_type="text/event-stream")

        disconnected, finals = await run_until_disconnect(raw_request, self._collect(gens))
        if disconnected:
            await self.abort(*rids)
            logger.info("client disconnected: aborted %s", request_id)
            return Response(status_code=499)
        return JSONResponse(self._response(request, model_name, request_id, created, prompts,
                                           finals))

    async def _collect(self, gens: list[AsyncIterator]) -> list:
        finals: list = [None] * len(gens)
        async for i, out in merge_generators(gens):
            finals[i] = out
        return finals

    def _prompt_text(self, p: _Prompt) -> str:
        return p.text if p.text is not None else self.decode(p.ids)

    def _response(self, request: CompletionRequest, model_name: str, request_id: str,
                  created: int, prompts: list[_Prompt], finals: list) -> dict:
        choices = []
        prompt_tokens = completion_tokens = 0
        tok = self.tokenizer
        n = request.n or 1
        for i, (p, out) in enumerate(zip(prompts, finals)):
            prompt_ids = list(getattr(out, "prompt_token_ids", None) or p.ids)
            prompt_tokens += len(prompt_ids)
            for o in out.outputs:
                token_ids = list(o.token_ids)
                completion_tokens += len(token_ids)
                text = o.text
                lp_ids, lp_steps = token_ids, list(o.logprobs or [])
                offset = 0
                if request.echo:
                    ptext = self._prompt_text(p)
                    text = ptext + text
                    if request.logprobs is not None:
                        plp = list(getattr(out, "prompt_logprobs", None) or [])
                        plp += [None] * (len(prompt_ids) - len(plp))
                        lp_ids = prompt_ids + token_ids
                        lp_steps = plp + lp_steps
                logprobs = None
                if request.logprobs is not None:
                    logprobs = completion_logprobs(tok, lp_ids, lp_steps, request.logprobs, offset,
                                                   bool(request.return_tokens_as_token_ids))
                choice = {"index": i * n + o.index, "text": text, "logprobs": logprobs,
                          "finish_reason": o.finish_reason, "stop_reason": o.stop_reason}
                if request.prompt_logprobs is not None:
                    choice["prompt_logprobs"] = _prompt_logprobs_json(out)
                choices.append(choice)
        choices.sort(key=lambda c: c["index"])
        return {"id": request_id, "object": "text_completion", "created": created,
                "model": model_name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens +
                          completion_tokens, "completion_tokens": completion_tokens}}

    async def _events(self, request: CompletionRequest, model_name: str, request_id: str,
                      created: int, prompts: list[_Prompt], gens: list[AsyncIterator],
                      n: int) -> AsyncIterator[str]:
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        # continuous_usage_stats: every chunk carries the usage so far (vLLM's extra)
        continuous = include_usage and bool(request.stream_options.continuous_usage_stats)
        tok = self.tokenizer
        deltas = StreamDeltas()
        prompt_tokens: dict[int, int] = {}
        offsets: dict[int, int] = {}
        async for i, out in merge_generators(gens):
            p = prompts[i]
            prompt_ids = getattr(out, "prompt_token_ids", None) or p.ids  # not copied per chunk
            prompt_tokens[i] = len(prompt_ids)
            for o in out.outputs:
                idx = i * n + o.index
                d = deltas.advance(idx, o)
                if d is None:
                    continue
                if d.first and request.echo:
                    d.text = self._prompt_text(p) + d.text
                    if request.logprobs is not None:
                        plp = list(getattr(out, "prompt_logprobs", None) or [])
                        plp += [None] * (len(prompt_ids) - len(plp))
                        d.token_ids = list(prompt_ids) + d.token_ids
                        d.logprobs = plp + d.logprobs
                if not d.text and not d.token_ids and o.finish_reason is None:
                    continue
                logprobs = None
                if request.logprobs is not None:
                    logprobs = completion_logprobs(tok, d.token_ids, d.logprobs, request.logprobs,
                                                   offsets.get(idx, 0),
                                                   bool(request.return_tokens_as_token_ids))
                    offsets[idx] = offsets.get(idx, 0) + sum(len(t) for t in logprobs["tokens"])
                chunk = {"id": request_id, "object": "text_completion", "created": created,
                         "model": model_name,
                         "choices": [{"index": idx, "text": d.text, "logprobs": logprobs,
                                      "finish_reason": o.finish_reason,
                                      "stop_reason": o.stop_reason}]}
                if include_usage:
                    chunk["usage"] = None
                    if continuous:
                        pt = sum(prompt_tokens.values())
                        ct = deltas.completion_tokens
                        chunk["usage"] = {"prompt_tokens": pt, "total_tokens": pt + ct,
                                          "completion_tokens": ct}
                yield f"data: {dumps(chunk)}\n\n"
        if include_usage:
            pt = sum(prompt_tokens.values())
            ct = deltas.completion_tokens
            chunk = {"id": request_id, "object": "text_completion", "created": created,
                     "model": model_name, "choices": [],
                     "usage": {"prompt_tokens": pt, "total_tokens": pt + ct,
                               "completion_tokens": ct}}
            yield f"data: {dumps(chunk)}\n\n"


def _prompt_logprobs_json(out: Any) -> Optional[list]:
    plp = getattr(out, "prompt_logprobs", None)
    if plp is None:
        return None
    result = []
    for step in plp:
        if step is None:
            result.append(None)
            continue
        result.append({str(tid): {"logprob": getattr(lp, "logprob", lp),
                                  "rank": getattr(lp, "rank", None),
                                  "decoded_token": getattr(lp, "decoded_token", None)}
                       for tid, lp in step.items()})
    return result
