"""What completions and chat completions share: request -> SamplingParams, prompt checks,
logprobs formatting, merging several generators, and aborting on disconnect.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

import anyio

from llmcore.entrypoints.lifecycle import RequestTerminated, ServerLifecycle
from llmcore.entrypoints.openai.errors import APIError, sse_error, value_error_to_api_error
from llmcore.entrypoints.openai.structured_output import (field_error,
                                                         guided_decoding_from_request)
from llmcore.entrypoints.request_log import prompt_for_log
from llmcore.entrypoints.request_validation import (UNSUPPORTED, InvalidField, first_out_of_vocab,
                                                    make_sampling_params, streaming_conflict)
from llmcore.entrypoints.stream_deltas import ChoiceDelta, StreamDeltas  # noqa: F401 (re-export)
from llmcore.tokenizer.pool import encode_text

logger = logging.getLogger("llmcore.entrypoints.openai")


def random_id() -> str:
    return uuid.uuid4().hex


@dataclass
class ServerConfig:
    """Front-end settings that the handlers need (passed down explicitly)."""

    served_model_names: list[str]
    max_model_len: int
    vocab_size: int
    max_logprobs: int = 20
    max_num_seqs: int = 256
    response_role: str = "assistant"
    chat_template: Optional[str] = None           # --chat-template, already loaded
    enable_auto_tool_choice: bool = False
    tool_parser_cls: Optional[type] = None          # --tool-call-parser's class
    trust_request_chat_template: bool = False
    disable_log_requests: bool = True
    max_log_len: Optional[int] = None
    # generation_config.json defaults for request fields left unset (ServedModelInfo's)
    sampling_defaults: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


class OpenAIServingBase:
    def __init__(self, engine: Any, config: ServerConfig,
                 lifecycle: Optional[ServerLifecycle] = None):
        self.engine = engine
        self.config = config
        self.lifecycle = lifecycle

    # ------------------------------------------------------------------ checks
    def check_model(self, model: Optional[str]) -> str:
        names = self.config.served_model_names
        if model is None or model == "" or model in names:
            return names[0]
        raise APIError(f"The model `{model}` does not exist.", 400, param="model",
                       code="model_not_found")

    def check_unsupported(self, request: Any) -> None:
        if request.stream_options is not None and not request.stream:
            raise APIError("stream_options can only be set when stream is true", 400,
                           param="stream_options")
        extra = getattr(request, "model_extra", None) or {}
        if extra:
            logger.warning("ignoring unknown request fields: %s", sorted(extra))

    @property
    def tokenizer(self):
        tok = getattr(self.engine, "tokenizer", None)
        return tok

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        tok = self.tokenizer
        if tok is None:
            raise APIError("text prompts need a tokenizer (the server runs with "
                           "--skip-tokenizer-init): send token ids", 400, param="prompt")
        return list(tok.encode(text, add_special_tokens=add_special_tokens))

    async def tokenizer_call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """fn(tokenizer, *args, **kwargs) in the engine's tokenizer pool (off the event loop
        with --tokenizer-pool-size > 0), inline for engines without one."""
        pool = getattr(self.engine, "tokenizer_pool", None)
        if pool is None:
            return fn(self.tokenizer, *args, **kwargs)
        return await pool.run(fn, *args, **kwargs)

    async def encode_async(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if self.tokenizer is None:
            return self.encode(text, add_special_tokens)  # the 400 for a missing tokenizer
        return await self.tokenizer_call(encode_text, text, add_special_tokens)

    def decode(self, ids: list[int]) -> str:
        tok = self.tokenizer
        if tok is None:
            return ""
        return tok.decode(ids)

    def check_token_ids(self, ids: list[int], param: str = "prompt") -> None:
        vocab = self.config.vocab_size
        bad = first_out_of_vocab(ids, vocab) if vocab > 0 else (0 if ids else None)
        if bad is not None:
            raise APIError(f"token id {ids[bad]} is out of vocabulary (0..{vocab - 1})", 400,
                           param=param)

    def check_length(self, prompt_len: int, max_tokens: Optional[int],
                     what: str = "prompt") -> int:
        """Return the effective max_tokens; 400 when prompt + max_tokens exceeds the context."""
        limit = self.config.max_model_len
        if prompt_len == 0:
            raise APIError(f"The {what} is empty.", 400, param="prompt" if what == "prompt" else
                           "messages")
        if max_tokens is None:
            if prompt_len >= limit:
                raise APIError(f"This model's maximum context length is {limit} tokens. However, "
                               f"your {what} has {prompt_len} tokens. Please reduce the length of "
                               f"the {what}.", 400,
                               param="prompt" if what == "prompt" else "messages",
                               code="context_length_exceeded")
            return limit - prompt_len
        if max_tokens < 1:
            raise APIError(f"max_tokens must be at least 1, got {max_tokens}.", 400, param="max_tokens")
        if prompt_len + max_tokens > limit:
            raise APIError(f"This model's maximum context length is {limit} tokens. However, you "
                           f"requested {prompt_len + max_tokens} tokens ({prompt_len} in the "
                           f"{what}, {max_tokens} in the completion). Please reduce the length of "
                           f"the {what} or completion.", 400,
                           param="prompt" if what == "prompt" else "messages",
                           code="context_length_exceeded")
        return max_tokens

    def resolve_max_tokens(self, request: Any, prompt_len: int, what: str = "prompt") -> int:
        """The request's max_tokens: the smaller of max_tokens and max_completion_tokens when
        given (400 when it exceeds the context), else the generation config's
        max_new_tokens capped at the context left, else the protocol default."""
        explicit = []
        mt = getattr(request, "max_tokens", None)
        if mt is not None and "max_tokens" in request.model_fields_set:
            explicit.append(mt)
        mct = getattr(request, "max_completion_tokens", None)
        if mct is not None:
            if mct < 1:
                raise APIError(f"max_completion_tokens must be at least 1, got {mct}.", 400,
                               param="max_completion_tokens")
            explicit.append(mct)
        if explicit:
            return self.check_length(prompt_len, min(explicit), what)
        default = self.config.sampling_defaults.get("max_tokens")
        if default is not None:
            return min(int(default), self.check_length(prompt_len, None, what))
        return self.check_length(prompt_len, mt, what)

    def request_value(self, request: Any, name: str) -> Any:
        """A sampling field of the request; when the request leaves it unset (absent or
        null), the model's generation-config default if it has one."""
        value = getattr(request, name, None)
        defaults = self.config.sampling_defaults
        if name in defaults and (value is None or name not in request.model_fields_set):
            return defaults[name]
        return value

    def check_priority(self, request: Any) -> int:
        priority = getattr(request, "priority", None) or 0
        if not -(2**31) <= priority < 2**31:
            raise APIError(f"priority must fit a 32-bit signed integer, got {priority}.", 400,
                           param="priority")
        return int(priority)

    # ------------------------------------------------------------------ sampling
    def sampling_params(self, request: Any, *, max_tokens: int, logprobs: Optional[int],
                        prompt_logprobs: Optional[int]) -> Any:
        n = request.n if request.n is not None else 1
        limit_n = self.config.max_num_seqs
        if n < 1:
            raise APIError(f"n must be at least 1, got {n}.", 400, param="n")
        best_of = request.best_of
        if n > limit_n:
            raise APIError(f"n must be at most {limit_n} (--max-num-seqs), got {n}.", 400, param="n")
        if best_of is not None and best_of > limit_n:
            raise APIError(f"best_of must be at most {limit_n} (--max-num-seqs), got {best_of}.", 400,
                           param="best_of")
        for name, value in (("logprobs", logprobs), ("prompt_logprobs", prompt_logprobs)):
            if value is not None and value > self.config.max_logprobs:
                raise APIError(f"{name} must be at most {self.config.max_logprobs} "
                               f"(--max-logprobs), got {value}.", 400,
                               param="top_logprobs" if name == "logprobs" and
                               hasattr(request, "top_logprobs") else name)
            if value is not None and value < 0:
                raise APIError(f"{name} must be non-negative, got {value}.", 400, param=name)
        conflict = streaming_conflict(n, best_of, bool(request.use_beam_search)) \
            if request.stream else None
        if conflict == "use_beam_search":
            raise APIError("use_beam_search is not supported with stream=true", 400,
                           param="use_beam_search")
        if conflict == "best_of":
            raise APIError("best_of > n is not supported with stream=true", 400, param="best_of")
        stop = request.stop
        if isinstance(stop, str):
            stop = [stop]
        stop_token_ids = list(request.stop_token_ids or [])
        if stop_token_ids:
            self.check_token_ids(stop_token_ids, param="stop_token_ids")
        if request.min_tokens is not None and request.min_tokens > max_tokens:
            raise APIError(f"min_tokens must be less than or equal to max_tokens={max_tokens}, got "
                           f"{request.min_tokens}.", 400, param="min_tokens")
        kwargs: dict[str, Any] = dict(
            n=n, best_of=best_of, presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            repetition_penalty=self.request_value(request, "repetition_penalty"),
            temperature=self.request_value(request, "temperature"),
            top_p=self.request_value(request, "top_p"), top_k=self.request_value(request, "top_k"),
            min_p=self.request_value(request, "min_p"), seed=request.seed,
            use_beam_search=request.use_beam_search, length_penalty=request.length_penalty,
            early_stopping=request.early_stopping, stop=stop, stop_token_ids=stop_token_ids,
            include_stop_str_in_output=request.include_stop_str_in_output,
            ignore_eos=request.ignore_eos, max_tokens=max_tokens, min_tokens=request.min_tokens,
            logprobs=logprobs, prompt_logprobs=prompt_logprobs,
            skip_special_tokens=request.skip_special_tokens,
            spaces_between_special_tokens=request.spaces_between_special_tokens,
        )
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        guided = guided_decoding_from_request(request)
        if guided is not None:
            if request.use_beam_search:
                raise APIError("use_beam_search cannot be combined with structured output", 400,
                               param="use_beam_search")
            kwargs["guided_decoding"] = guided
        if request.logit_bias:
            bias: dict[int, float] = {}
            for key, value in request.logit_bias.items():
                try:
                    tid = int(key)
                except ValueError:
                    raise APIError(f"logit_bias key {key!r} is not a token id", 400,
                                   param="logit_bias") from None
                self.check_token_ids([tid], param="logit_bias")
                bias[tid] = min(100.0, max(-100.0, float(value)))
            kwargs["logit_bias"] = bias
        try:
            return make_sampling_params(kwargs)
        except InvalidField as e:
            if e.kind == UNSUPPORTED:
                raise APIError(e.message, 400, param=e.field) from None
            raise value_error_to_api_error(e) from None

    # ------------------------------------------------------------------ generation
    async def prime(self, prompt: Any, params: Any, request_id: str,
                    priority: int = 0, guided_field: Optional[str] = None, *,
                    encode: bool = False) -> tuple[Any, AsyncIterator]:
        """Start generating (encode: pooling, on an embedding model) and wait for the first
        output, so that errors the engine raises (bad prompt, bad params, a grammar the
        backend cannot compile) become a 400 before any response byte is sent. guided_field:
        the request field that set the grammar, named in such an error. priority 0 is the
        engine's default, so it is passed only when another is asked for."""
        submit = self.engine.encode if encode else self.engine.generate
        try:
            if priority:
                gen = submit(prompt, params, request_id, priority=priority)
            else:
                gen = submit(prompt, params, request_id)
            if self.lifecycle is not None:
                gen = self.lifecycle.track(gen)
            first = await gen.__anext__()
        except StopAsyncIteration:
            raise APIError("the engine returned no output", 500) from None
        except (ValueError, TypeError, OverflowError) as e:
            await self.abort(request_id)
            if guided_field is not None and "guided_decoding" in str(e):
                raise field_error(str(e), guided_field) from None
            raise value_error_to_api_error(e) from None
        except RuntimeError as e:
            if getattr(self.engine, "errored", False):
                raise APIError(f"the engine is not running: {e}", 503) from None
            raise
        return first, gen

    async def abort(self, *request_ids: str) -> None:
        with anyio.CancelScope(shield=True):
            for rid in request_ids:
                try:
                    await self.engine.abort(rid)
                except Exception:  # noqa: BLE001 - abort is best effort and idempotent
                    logger.debug("abort %s failed", rid, exc_info=True)

    def log_request(self, request_id: str, prompt: Any, params: Any, *,
                    user: Optional[str] = None, priority: int = 0) -> None:
        if self.config.disable_log_requests:
            return
        text, ids = prompt_for_log(prompt, self.config.max_log_len)
        logger.info("request %s: prompt=%r prompt_token_ids=%s params=%s user=%r priority=%d",
                    request_id, text, ids, params, user, priority)


async def sse_stream(events: AsyncIterator[str], request_id: str,
                     abort: Callable[[], Awaitable[Any]]) -> AsyncIterator[str]:
    """One request's server-sent events: `events`, then `data: [DONE]`. A failure becomes an
    OpenAI error event; a stream that does not complete (error, client gone) aborts the
    request through `abort()` so its KV blocks are freed at once."""
    complete = False
    try:
        async for event in events:
            yield event
        complete = True
    except APIError as e:
        yield sse_error(e.message, e.status, e.param, e.code)
    except RequestTerminated as e:
        yield sse_error(e.message, 503)
    except (ValueError, TypeError) as e:
        yield sse_error(str(e), 400)
    except Exception as e:  # noqa: BLE001 - the stream must end with an error event
        logger.exception("error while streaming %s", request_id)
        yield sse_error(f"internal error: {type(e).__name__}: {e}", 500)
    finally:
        if not complete:
            await abort()
    yield "data: [DONE]\n\n"


async def chain_first(first: Any, gen: AsyncIterator) -> AsyncIterator:
    yield first
    async for item in gen:
        yield item


async def merge_generators(gens: list[AsyncIterator]) -> AsyncIterator[tuple[int, Any]]:
    """Yield (index, item) from several async iterators as items arrive."""
    if len(gens) == 1:
        async for item in gens[0]:
            yield 0, item
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int, g: AsyncIterator) -> None:
        try:
            async for item in g:
                await queue.put((i, item))
        except BaseException as e:  # noqa: BLE001 - forwarded to the consumer
            await queue.put((i, e))
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        await queue.put((i, done))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
    remaining = len(gens)
    try:
        while remaining:
            i, item = await queue.get()
            if item is done:
                remaining -= 1
                continue
            if isinstance(item, BaseException):
                raise item
            yield i, item
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)


async def run_until_disconnect(raw_request: Any, coro) -> tuple[bool, Any]:
    """Run `coro` (a non-streaming generation) while watching for the client going away.

    Returns (disconnected, result). On disconnect the coroutine's task is cancelled, which
    closes the engine generators (the engine then aborts the requests).
    """
    task = asyncio.ensure_future(coro)

    async def watch() -> None:
        while True:
            message = await raw_request.receive()
            if message.get("type") == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        watcher.cancel()
        raise
    if task in done:
        watcher.cancel()
        return False, task.result()
    task.cancel()
    with anyio.CancelScope(shield=True):
        await asyncio.gather(task, return_exceptions=True)
    return True, None


# ---------------------------------------------------------------------- logprobs
def _lp_value(lp: Any) -> float:
    value = getattr(lp, "logprob", lp)
    value = float(value)
    if math.isnan(value):
        return -9999.0
    return max(value, -9999.0)


def _token_text(tokenizer: Any, token_id: int, lp: Any, as_token_ids: bool = False) -> str:
    if as_token_ids:  # return_tokens_as_token_ids: unambiguous even for partial UTF-8
        return f"token_id:{token_id}"
    text = getattr(lp, "decoded_token", None)
    if text is None:
        text = tokenizer.decode([token_id]) if tokenizer is not None else f"token_id:{token_id}"
    return text


def top_entries(step: Optional[dict], k: int) -> list[tuple[int, Any]]:
    if not step:
        return []
    items = sorted(step.items(), key=lambda kv: (getattr(kv[1], "rank", None) or 10**9,
                                                 -_lp_value(kv[1])))
    return items[:k]


def completion_logprobs(tokenizer: Any, token_ids: list[int], logprobs: list[Optional[dict]],
                        num: int, initial_offset: int, as_token_ids: bool = False) -> dict:
    """OpenAI legacy completions logprobs: tokens, token_logprobs, top_logprobs, text_offset."""
    out_tokens: list[str] = []
    out_lps: list[Optional[float]] = []
    out_top: list[Optional[dict]] = []
    offsets: list[int] = []
    offset = initial_offset
    for i, tid in enumerate(token_ids):
        step = logprobs[i] if i < len(logprobs) else None
        if step is None:
            text = _token_text(tokenizer, tid, None, as_token_ids) if as_token_ids else (
                tokenizer.decode([tid]) if tokenizer is not None else "")
            out_tokens.append(text)
            out_lps.append(None)
            out_top.append(None)
        else:
            lp = step.get(tid)
            text = _token_text(tokenizer, tid, lp, as_token_ids) if lp is not None or as_token_ids \
                else (tokenizer.decode([tid]) if tokenizer is not None else "")
            out_tokens.append(text)
            out_lps.append(_lp_value(lp) if lp is not None else None)
            top = {}
            for t, l in top_entries(step, max(num, 0)):
                top[_token_text(tokenizer, t, l, as_token_ids)] = _lp_value(l)
            if lp is not None and num > 0:
                top.setdefault(text, _lp_value(lp))
            out_top.append(top)
        offsets.append(offset)
        offset += len(text)
    return {"text_offset": offsets, "token_logprobs": out_lps, "tokens": out_tokens,
            "top_logprobs": out_top}


def chat_logprobs(tokenizer: Any, token_ids: list[int], logprobs: list[Optional[dict]],
                  num: int, as_token_ids: bool = False) -> dict:
    content = []
    for i, tid in enumerate(token_ids):
        step = logprobs[i] if i < len(logprobs) else None
        lp = step.get(tid) if step else None
        text = _token_text(tokenizer, tid, lp, as_token_ids) if lp is not None or as_token_ids \
            else (tokenizer.decode([tid]) if tokenizer is not None else "")
        top = []
        for t, l in top_entries(step, max(num, 0)):
            tt = _token_text(tokenizer, t, l, as_token_ids)
            top.append({"token": tt, "logprob": _lp_value(l), "bytes": list(tt.encode("utf-8"))})
        content.append({"token": text, "logprob": _lp_value(lp) if lp is not None else -9999.0,
                        "bytes": list(text.encode("utf-8")), "top_logprobs": top})
    return {"content": content}
