"""Conversions between llmcore's engine objects and the llmcore.v1 protobuf messages:
sampling parameters in, streamed deltas / logprobs / usage out."""

from __future__ import annotations

import asyncio
from typing import Any, Optional

import grpc

from llmcore.entrypoints.grpc._stubs import pb2
from llmcore.entrypoints.request_validation import BAD_VALUE, InvalidField, make_sampling_params
from llmcore.entrypoints.stream_deltas import StreamDeltas

_FINISH = {
    None: pb2.FINISH_REASON_UNSPECIFIED,
    "stop": pb2.FINISH_REASON_STOP,
    "length": pb2.FINISH_REASON_LENGTH,
    "abort": pb2.FINISH_REASON_ABORT,
}

# SamplingParams fields carried as proto3 `optional` scalars: set = given, unset = default.
_OPTIONAL_FIELDS = (
    "n", "best_of", "presence_penalty", "frequency_penalty", "repetition_penalty", "temperature",
    "top_p", "top_k", "min_p", "seed", "use_beam_search", "length_penalty",
    "include_stop_str_in_output", "ignore_eos", "max_tokens", "min_tokens", "logprobs",
    "prompt_logprobs", "detokenize", "skip_special_tokens", "spaces_between_special_tokens",
    "truncate_prompt_tokens",
)
_FLOAT_FIELDS = ("presence_penalty", "frequency_penalty", "repetition_penalty", "temperature",
                 "top_p", "min_p", "length_penalty")


class RpcError(Exception):
    """Raised inside a handler; turned into context.abort(code, message)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> RpcError:
    return RpcError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _is_unavailable_error(e: BaseException) -> bool:
    name = type(e).__name__.lower()
    return isinstance(e, asyncio.QueueFull) or any(
        w in name for w in ("dead", "overload", "unavailable", "shutdown", "closed"))


# ---------------------------------------------------------------------------------------------
# conversions

def _f32(v: float) -> float:
    """A float32 proto value back to the decimal the client wrote (0.7, not 0.699999988)."""
    return float(f"{v:.7g}")


def sampling_params_from_proto(msg: Any, *, has_msg: bool = True,
                               defaults: Optional[dict] = None):
    """pb2.SamplingParams -> llmcore.SamplingParams. Raises RpcError(INVALID_ARGUMENT).

    defaults: the model's generation-config defaults (ServedModelInfo.sampling_defaults),
    used for the fields the message leaves unset."""
    kwargs: dict[str, Any] = {}
    for name, value in (defaults or {}).items():
        if not (has_msg and msg.HasField(name)):
            kwargs[name] = value
    if has_msg:
        for name in _OPTIONAL_FIELDS:
            if msg.HasField(name):
                v = getattr(msg, name)
                kwargs[name] = _f32(v) if name in _FLOAT_FIELDS else v
        if msg.HasField("early_stopping"):
            es = msg.early_stopping.strip().lower()
            if es not in ("true", "false", "never"):
                raise _invalid("sampling_params.early_stopping: must be 'true', 'false' or 'never', "
                               f"got {msg.early_stopping!r}")
            kwargs["early_stopping"] = {"true": True, "false": False}.get(es, "never")
        if len(msg.stop):
            kwargs["stop"] = list(msg.stop)
        if len(msg.stop_token_ids):
            kwargs["stop_token_ids"] = list(msg.stop_token_ids)
        if len(msg.logit_bias):
            kwargs["logit_bias"] = {int(k): _f32(v) for k, v in msg.logit_bias.items()}
        if msg.HasField("guided_decoding"):
            kwargs["guided_decoding"] = guided_decoding_from_proto(msg.guided_decoding)
    try:
        return make_sampling_params(kwargs)
    except InvalidField as e:
        if e.kind == BAD_VALUE:  # the message starts with the field's name
            raise _invalid(f"sampling_params.{e}") from None
        raise _invalid(f"sampling_params: {e}") from None  # a field it does not take


_PROTO_GUIDED_FIELD = {"json": "json_schema", "regex": "regex", "choice": "choice",
                      "grammar": "grammar", "json_object": "json_object",
                      "backend": "backend", "whitespace_pattern": "whitespace_pattern"}


def guided_error_message(message: str) -> str:
    """A guided-decoding ValueError ("guided_decoding.json: ...") in the proto's field names."""
    for ours, theirs in _PROTO_GUIDED_FIELD.items():
        message = message.replace(f"guided_decoding.{ours}",
                                  f"sampling_params.guided_decoding.{theirs}")
    return message


def guided_decoding_from_proto(g: Any) -> Any:
    """pb2.GuidedDecoding -> GuidedDecodingParams, checked (RpcError INVALID_ARGUMENT)."""
    from llmcore.sampling_params import GuidedDecodingParams
    from llmcore.structured_output.spec import spec_from_params
    which = g.WhichOneof("constraint")
    if which is None:
        raise _invalid("sampling_params.guided_decoding: set one of json_schema, regex, choice, "
                       "grammar, json_object")
    kwargs: dict[str, Any] = {"backend": g.backend or None,
                              "whitespace_pattern": g.whitespace_pattern or None}
    if which == "json_schema":
        kwargs["json"] = g.json_schema
    elif which == "choice":
        kwargs["choice"] = list(g.choice.choices)
    elif which == "json_object":
        if not g.json_object:
            raise _invalid("sampling_params.guided_decoding.json_object: must be true when set")
        kwargs["json_object"] = True
    else:
        kwargs[which] = getattr(g, which)
    try:
        params = GuidedDecodingParams(**kwargs)
        spec_from_params(params)
    except ValueError as e:
        msg = guided_error_message(str(e))
        if not msg.startswith("sampling_params."):
            msg = f"sampling_params.guided_decoding: {msg}"
        raise _invalid(msg) from None
    return params


def _token_logprob(token_id: int, lp: Any) -> Any:
    m = pb2.TokenLogprob(token_id=int(token_id), logprob=float(lp.logprob))
    if getattr(lp, "rank", None) is not None:
        m.rank = int(lp.rank)
    if getattr(lp, "decoded_token", None):
        m.decoded_token = lp.decoded_token
    return m


def _position_logprobs(chosen: int, entry: Optional[dict], k: int) -> Any:
    pos = pb2.PositionLogprobs()
    if not entry:
        return pos
    if chosen in entry:
        pos.token.CopyFrom(_token_logprob(chosen, entry[chosen]))
    if k > 0:
        top = sorted(entry.items(), key=lambda kv: kv[1].logprob, reverse=True)[:k]
        pos.top_logprobs.extend(_token_logprob(t, lp) for t, lp in top)
    return pos


class _StreamState:
    """Turns cumulative RequestOutput snapshots into GenerateResponse deltas."""

    def __init__(self, request_id: str, model: str, params: Any):
        self.request_id = request_id
        self.model = model
        self.k = int(getattr(params, "logprobs", None) or 0)
        self.prompt_k = getattr(params, "prompt_logprobs", None)
        self.deltas = StreamDeltas()
        self.first = True

    def delta(self, out: Any) -> Optional[Any]:
        msg = pb2.GenerateResponse(request_id=self.request_id, model=self.model,
                                   finished=bool(out.finished))
        news = False
        for c in out.outputs:
            d = self.deltas.advance(c.index, c)
            if d is None:  # finished earlier: nothing more to send
                continue
            chunk = pb2.CompletionChunk(index=c.index)
            if d.text:
                chunk.text = d.text
            if d.token_ids:
                chunk.token_ids.extend(int(t) for t in d.token_ids)
                if c.logprobs is not None:
                    chunk.logprobs.extend(_position_logprobs(int(t), lp, self.k)
                                          for t, lp in zip(d.token_ids, d.logprobs))
            if d.finished:
                _set_finish(chunk, c)
            if getattr(c, "cumulative_logprob", None) is not None and (chunk.token_ids
                                                                       or d.finished):
                chunk.cumulative_logprob = float(c.cumulative_logprob)
            if chunk.text or chunk.token_ids or chunk.finish_reason:
                msg.outputs.append(chunk)
                news = True
        if self.first:
            self.first = False
            _set_prompt(msg, out, self.prompt_k)
            news = True
        if out.finished:
            _set_usage(msg, out)
        return msg if (news or out.finished) else None


def _set_finish(chunk: Any, c: Any) -> None:
    chunk.finish_reason = _FINISH.get(c.finish_reason, pb2.FINISH_REASON_UNSPECIFIED)
    sr = getattr(c, "stop_reason", None)
    if isinstance(sr, str):
        chunk.stop_str = sr
    elif isinstance(sr, int) and not isinstance(sr, bool):
        chunk.stop_token_id = sr


def _set_prompt(msg: Any, out: Any, k: Optional[int]) -> None:
    ids = list(out.prompt_token_ids or [])
    msg.prompt_token_ids.extend(int(t) for t in ids)
    plp = getattr(out, "prompt_logprobs", None)
    if plp:
        msg.prompt_logprobs.extend(_position_logprobs(int(ids[j]), e, k or 0)
                                   for j, e in enumerate(plp[:len(ids)]))


def _set_usage(msg: Any, out: Any) -> None:
    p = len(out.prompt_token_ids or [])
    c = sum(len(o.token_ids) for o in out.outputs)
    msg.usage.CopyFrom(pb2.Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c))


def _full_response(out: Any, request_id: str, model: str, params: Any) -> Any:
    st = _StreamState(request_id, model, params)
    return st.delta(out)

