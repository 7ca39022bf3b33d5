"""POST /v1/chat/completions."""

from __future__ import annotations

from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from llmcore.entrypoints.chat_template import (ChatTemplateError, render_chat,
                                                render_chat_and_encode)
from llmcore.entrypoints.openai.errors import APIError
from llmcore.entrypoints.openai.protocol import ChatCompletionRequest, now
from llmcore.entrypoints.openai.serving_completion import dumps
from llmcore.entrypoints.openai.serving_engine import (OpenAIServingBase, chain_first,
                                                       chat_logprobs, logger, random_id,
                                                       run_until_disconnect, sse_stream,
                                                       StreamDeltas)

_RESERVED_TEMPLATE_KWARGS = {"messages", "add_generation_prompt", "continue_final_message",
                             "bos_token", "eos_token"}


class OpenAIServingChat(OpenAIServingBase):

    def _messages(self, request: ChatCompletionRequest) -> list[dict]:
        if not request.messages:
            raise APIError("messages must not be empty", 400, param="messages")
        out = []
        for m in request.messages:
            content = m.content
            if isinstance(content, list):
                texts = []
                for part in content:
                    if part.type != "text":
                        raise APIError(f"message content of type {part.type!r} is not supported "
                                       "(text only)", 400, param="messages")
                    texts.append(part.text or "")
                content = "\n".join(texts)
            msg: dict[str, Any] = {"role": m.role, "content": content if content is not None else ""}
            if m.name is not None:
                msg["name"] = m.name
            out.append(msg)
        return out

    def _template(self, request: ChatCompletionRequest) -> str:
        requested = getattr(request, "chat_template", None)
        if requested is not None:
            if not self.config.trust_request_chat_template:
                raise APIError("chat_template in a request is refused: the server was not started "
                               "with --trust-request-chat-template", 400, param="chat_template")
            if not isinstance(requested, str):
                raise APIError("chat_template must be a string", 400, param="chat_template")
            return requested
        template = self.config.chat_template or getattr(self.engine, "chat_template", None)
        if not template:
            raise APIError("the model has no chat template; start the server with "
                           "--chat-template", 400, param="messages")
        return template

    def render(self, request: Any, messages: list[dict], template: str) -> str:
        tok = self.tokenizer
        kwargs = {k: v for k, v in (getattr(request, "chat_template_kwargs", None) or {}).items()
                  if k not in _RESERVED_TEMPLATE_KWARGS and isinstance(k, str)}
        try:
            return render_chat(template, messages,
                               add_generation_prompt=bool(getattr(request, "add_generation_prompt",
                                                                  True)),
                               continue_final_message=bool(getattr(request, "continue_final_message",
                                                                   False)),
                               bos_token=getattr(tok, "bos_token", None) or "",
                               eos_token=getattr(tok, "eos_token", None) or "", **kwargs)
        except ChatTemplateError as e:
            raise APIError(str(e), 400, param="messages") from None

    async def render_and_encode(self, request: Any, messages: list[dict],
                                template: str) -> tuple[str, list[int]]:
        """(prompt text, ids), in the engine's tokenizer pool when it has one."""
        add_special = bool(request.add_special_tokens)
        if self.tokenizer is None:
            text = self.render(request, messages, template)
            return text, self.encode(text, add_special_tokens=add_special)  # raises the 400
        kwargs = {k: v for k, v in (getattr(request, "chat_template_kwargs", None) or {}).items()
                  if k not in _RESERVED_TEMPLATE_KWARGS and isinstance(k, str)}
        try:
            return await self.tokenizer_call(
                render_chat_and_encode, template, messages, add_special,
                bool(getattr(request, "add_generation_prompt", True)),
                bool(getattr(request, "continue_final_message", False)), kwargs)
        except ChatTemplateError as e:
            raise APIError(str(e), 400, param="messages") from None

    async def create_chat_completion(self, request: ChatCompletionRequest,
                                     raw_request: Request) -> Response:
        model_name = self.check_model(request.model)
        self.check_unsupported(request)
        if request.tools or request.functions:
            raise APIError("tools / function calling is not supported", 400, param="tools")
        if request.tool_choice not in (None, "none"):
            raise APIError("tool_choice is not supported", 400, param="tool_choice")
        if request.function_call not in (None, "none"):
            raise APIError("function_call is not supported", 400, param="function_call")
        top_logprobs = request.top_logprobs or 0
        if top_logprobs < 0:
            raise APIError("top_logprobs must be non-negative", 400, param="top_logprobs")
        if top_logprobs > 0 and not request.logprobs:
            raise APIError("when using top_logprobs, logprobs must be set to true", 400,
                           param="top_logprobs")
        messages = self._messages(request)
        prompt_text, ids = await self.render_and_encode(request, messages, self._template(request))
        trunc = request.truncate_prompt_tokens
        if trunc is not None:
            if trunc < 1:
                raise APIError("truncate_prompt_tokens must be >= 1", 400,
                               param="truncate_prompt_tokens")
            ids = ids[-trunc:]
        max_tokens = self.resolve_max_tokens(request, len(ids), what="messages")
        priority = self.check_priority(request)
        logprobs = top_logprobs if request.logprobs else None
        params = self.sampling_params(request, max_tokens=max_tokens, logprobs=logprobs,
                                      prompt_logprobs=request.prompt_logprobs)
        request_id = f"chat-{random_id()}"
        self.log_request(request_id, prompt_text, params, user=request.user, priority=priority)
        created = now()
        first, gen = await self.prime({"prompt_token_ids": ids}, params, request_id, priority)
        stream = chain_first(first, gen)
        role = self.config.response_role if request.add_generation_prompt else messages[-1]["role"]
        if request.stream:
            return StreamingResponse(
                sse_stream(self._events(request, model_name, request_id, created, role, messages,
                                        len(ids), stream),
                           request_id, lambda: self.abort(request_id)),
                media_type="text/event-stream")

        async def collect():
            final = None
            async for out in stream:
                final = out
            return final

        disconnected, final = await run_until_disconnect(raw_request, collect())
        if disconnected:
            await self.abort(request_id)
            logger.info("client disconnected: aborted %s", request_id)
            return Response(status_code=499)
        return JSONResponse(self._response(request, model_name, request_id, created, role,
                                           messages, len(ids), final))

    def _echo_text(self, request: ChatCompletionRequest, messages: list[dict], role: str) -> str:
        if request.echo and messages and messages[-1].get("role") == role:
            content = messages[-1].get("content")
            return content if isinstance(content, str) else ""
        return ""

    def _response(self, request, model_name, request_id, created, role, messages, prompt_len,
                  final) -> dict:
        tok = self.tokenizer
        choices = []
        completion_tokens = 0
        echo = self._echo_text(request, messages, role)
        for o in final.outputs:
            token_ids = list(o.token_ids)
            completion_tokens += len(token_ids)
            logprobs = None
            if request.logprobs:
                logprobs = chat_logprobs(tok, token_ids, list(o.logprobs or []),
                                         request.top_logprobs or 0,
                                         bool(request.return_tokens_as_token_ids))
            choices.append({"index": o.index,
                            "message": {"role": role, "content": echo + o.text, "tool_calls": []},
                            "logprobs": logprobs, "finish_reason": o.finish_reason,
                            "stop_reason": o.stop_reason})
        choices.sort(key=lambda c: c["index"])
        prompt_tokens = len(getattr(final, "prompt_token_ids", None) or []) or prompt_len
        return {"id": request_id, "object": "chat.completion", "created": created,
                "model": model_name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens,
                          "total_tokens": prompt_tokens + completion_tokens,
                          "completion_tokens": completion_tokens}}

    async def _events(self, request, model_name, request_id, created, role, messages, prompt_len,
                      stream: AsyncIterator) -> AsyncIterator[str]:
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        # continuous_usage_stats: every chunk carries the usage so far (vLLM's extra)
        continuous = include_usage and bool(request.stream_options.continuous_usage_stats)
        tok = self.tokenizer
        n = request.n or 1
        echo = self._echo_text(request, messages, role)
        deltas = StreamDeltas()
        prompt_tokens = prompt_len

        def usage_now() -> dict:
            ct = deltas.completion_tokens
            return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + ct,
                    "completion_tokens": ct}

        def chunk(choices: list, usage: Any = "unset") -> str:
            obj = {"id": request_id, "object": "chat.completion.chunk", "created": created,
                   "model": model_name, "choices": choices}
            if include_usage:
                if usage == "unset":
                    usage = usage_now() if continuous else None
                obj["usage"] = usage
            return f"data: {dumps(obj)}\n\n"

        for i in range(n):
            yield chunk([{"index": i, "delta": {"role": role, "content": ""}, "logprobs": None,
                          "finish_reason": None}])
            if echo:
                yield chunk([{"index": i, "delta": {"content": echo}, "logprobs": None,
                              "finish_reason": None}])
        async for out in stream:
            prompt_tokens = len(getattr(out, "prompt_token_ids", None) or []) or prompt_len
            for o in out.outputs:
                d = deltas.advance(o.index, o)
                if d is None or (not d.text and not d.token_ids and o.finish_reason is None):
                    continue
                logprobs = None
                if request.logprobs:
                    logprobs = chat_logprobs(tok, d.token_ids, d.logprobs,
                                             request.top_logprobs or 0,
                                             bool(request.return_tokens_as_token_ids))
                choice: dict[str, Any] = {"index": o.index, "delta": {"content": d.text}
                                          if d.text or o.finish_reason is None else {},
                                          "logprobs": logprobs,
                                          "finish_reason": o.finish_reason}
                if o.finish_reason is not None:
                    choice["stop_reason"] = o.stop_reason
                yield chunk([choice])
        if include_usage:
            yield chunk([], usage_now())
