"""A request's structured-output fields -> one GuidedDecodingParams (or a 400 naming the
field): OpenAI's `response_format` (json_object, json_schema), vLLM's `guided_json`,
`guided_regex`, `guided_choice`, `guided_grammar` (+ `guided_decoding_backend`,
`guided_whitespace_pattern`) and the newer `structured_outputs` object. At most one of
them may constrain a request."""

from __future__ import annotations

from typing import Any, Optional

from llmcore.entrypoints.openai.errors import APIError
from llmcore.sampling_params import GuidedDecodingParams
from llmcore.structured_output.spec import spec_from_params

_GUIDED_FIELDS = (("guided_json", "json"), ("guided_regex", "regex"),
                  ("guided_choice", "choice"), ("guided_grammar", "grammar"))
_STRUCTURED_OUTPUTS_KEYS = ("json", "regex", "choice", "grammar", "json_object",
                            "whitespace_pattern", "backend")


def _sources(request: Any) -> list:
    """(field name, GuidedDecodingParams kwargs) of every structured-output field set."""
    out = []
    rf = getattr(request, "response_format", None)
    if rf is not None and rf.type != "text":
        if rf.type == "json_object":
            out.append(("response_format", {"json_object": True}))
        elif rf.type == "json_schema":
            js = rf.json_schema
            if not isinstance(js, dict):
                raise APIError("response_format.json_schema is required when type is "
                               "'json_schema'", 400, param="response_format")
            schema = js.get("schema")
            out.append(("response_format", {"json": schema} if schema is not None
                        else {"json_object": True}))
        else:
            raise APIError(f"response_format type must be 'text', 'json_object' or "
                           f"'json_schema', got {rf.type!r}", 400, param="response_format")
    for name, key in _GUIDED_FIELDS:
        value = getattr(request, name, None)
        if value is not None:
            out.append((name, {key: value}))
    so = getattr(request, "structured_outputs", None)
    if so is not None:
        if not isinstance(so, dict):
            raise APIError("structured_outputs must be an object", 400, param="structured_outputs")
        unknown = sorted(set(so) - set(_STRUCTURED_OUTPUTS_KEYS))
        if unknown:
            raise APIError(f"structured_outputs: unknown keys {unknown}; known: "
                           f"{list(_STRUCTURED_OUTPUTS_KEYS)}", 400, param="structured_outputs")
        kwargs = {k: v for k, v in so.items() if v is not None}
        if any(k not in ("whitespace_pattern", "backend") for k in kwargs):
            out.append(("structured_outputs", kwargs))
    return out


def guided_field(request: Any) -> Optional[str]:
    """The request field that constrains its output (None when unconstrained)."""
    try:
        src = _sources(request)
    except APIError:
        return None
    return src[0][0] if src else None


def guided_decoding_from_request(request: Any) -> Optional[GuidedDecodingParams]:
    """The request's GuidedDecodingParams, checked (APIError 400 naming the field)."""
    sources = _sources(request)
    if not sources:
        return None
    if len(sources) > 1:
        raise APIError(f"only one of response_format, guided_json, guided_regex, guided_choice, "
                       f"guided_grammar, structured_outputs may be set; got "
                       f"{', '.join(n for n, _ in sources)}", 400, param=sources[1][0])
    name, kwargs = sources[0]
    kwargs = dict(kwargs)
    backend = getattr(request, "guided_decoding_backend", None)
    if backend is not None and "backend" not in kwargs:
        kwargs["backend"] = backend
    ws = getattr(request, "guided_whitespace_pattern", None)
    if ws is not None and "whitespace_pattern" not in kwargs:
        kwargs["whitespace_pattern"] = ws
    try:
        params = GuidedDecodingParams(**kwargs)
        spec_from_params(params)
    except (ValueError, TypeError) as e:
        raise field_error(str(e), name) from None
    return params


def field_error(message: str, name: str) -> APIError:
    """A guided-decoding ValueError worded for the request field `name` that caused it."""
    param = name
    if "guided_decoding.backend" in message:
        param = "guided_decoding_backend" if name != "structured_outputs" else name
    elif "guided_decoding.whitespace_pattern" in message:
        param = "guided_whitespace_pattern" if name != "structured_outputs" else name
    label = "response_format.json_schema.schema" if name == "response_format" else name
    for kind in ("json", "regex", "choice", "grammar", "json_object"):
        message = message.replace(f"guided_decoding.{kind}", label)
    message = message.replace("guided_decoding.backend", param).replace(
        "guided_decoding.whitespace_pattern", param)
    return APIError(message, 400, param=param)
