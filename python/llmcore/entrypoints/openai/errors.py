"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import json
import re
from typing import Any, Optional

from fastapi.responses import JSONResponse

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    500: "internal_server_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """Raised by the serving code; rendered by the app's exception handler."""

    def __init__(self, message: str, status: int = 400, param: Optional[str] = None,
                 code: Optional[str] = None, type: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.status, self.param, self.code, self.type)


def error_body(message: str, status: int = 400, param: Optional[str] = None,
               code: Optional[str] = None, type: Optional[str] = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type or _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def error_response(message: str, status: int = 400, param: Optional[str] = None,
                   code: Optional[str] = None, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse(error_body(message, status, param, code), status_code=status, headers=headers)


def sse_error(message: str, status: int = 400, param: Optional[str] = None,
              code: Optional[str] = None) -> str:
    """The error event that ends a failed stream (followed by `data: [DONE]`)."""
    return f"data: {json.dumps(error_body(message, status, param, code))}\n\n"


# Names of request / sampling fields that an error message may name.
_FIELD_RE = re.compile(r"\b([a-z][a-z0-9_]*)\b")
_KNOWN_PARAMS = {
    "n", "best_of", "temperature", "top_p", "top_k", "min_p", "presence_penalty",
    "frequency_penalty", "repetition_penalty", "max_tokens", "min_tokens", "logprobs",
    "top_logprobs", "prompt_logprobs", "stop", "stop_token_ids", "seed", "use_beam_search",
    "length_penalty", "early_stopping", "ignore_eos", "skip_special_tokens", "logit_bias",
    "include_stop_str_in_output", "spaces_between_special_tokens", "truncate_prompt_tokens",
    "prompt", "messages", "model", "stream_options", "echo", "suffix", "response_format",
    "tools", "tool_choice", "chat_template", "tokens", "user",
}


def param_from_message(message: str) -> Optional[str]:
    """The request field a ValueError's message names, if any (first match wins)."""
    for m in _FIELD_RE.finditer(message):
        word = m.group(1)
        if word in _KNOWN_PARAMS:
            return word
    return None


def value_error_to_api_error(e: BaseException) -> APIError:
    message = str(e) or type(e).__name__
    return APIError(message, 400, param=param_from_message(message))
