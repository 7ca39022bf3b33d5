"""Request models of the OpenAI-compatible API (OpenAI fields plus vLLM's extras).

The FastAPI routes take these as their bodies, so /openapi.json describes the real
request schema. Responses are plain dicts built in serving_*.py, in vLLM's exact shape.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

# Every integer in a request must fit an int64 (the engine packs them into tensors).
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
TokenId = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


class OpenAIBaseModel(BaseModel):
    # Unknown fields are kept (and reported in the log) like vLLM; NaN/inf are refused.
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class StreamOptions(OpenAIBaseModel):
    include_usage: Optional[bool] = True
    continuous_usage_stats: Optional[bool] = False


class ResponseFormat(OpenAIBaseModel):
    type: str = "text"
    json_schema: Optional[dict[str, Any]] = None


class _SamplingFields(OpenAIBaseModel):
    """Fields shared by completions and chat completions."""

    model: Optional[str] = None
    frequency_penalty: Optional[float] = 0.0
    presence_penalty: Optional[float] = 0.0
    logit_bias: Optional[dict[str, float]] = None
    max_tokens: Optional[Int64] = None
    n: Optional[Int64] = 1
    seed: Optional[Int64] = None
    stop: Optional[Union[str, list[str]]] = None
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    temperature: Optional[float] = 1.0
    top_p: Optional[float] = 1.0
    user: Optional[str] = None  # logged with the request

    # Scheduling priority (vLLM's): lower values are scheduled first; default 0.
    priority: Optional[Int64] = 0
    # vLLM extra: logprob tokens rendered as "token_id:N" instead of their text.
    return_tokens_as_token_ids: Optional[bool] = False

    # vLLM extras
    best_of: Optional[Int64] = None
    use_beam_search: Optional[bool] = False
    top_k: Optional[Int64] = -1
    min_p: Optional[float] = 0.0
    repetition_penalty: Optional[float] = 1.0
    length_penalty: Optional[float] = 1.0
    early_stopping: Optional[bool] = False
    stop_token_ids: Optional[list[TokenId]] = None
    include_stop_str_in_output: Optional[bool] = False
    ignore_eos: Optional[bool] = False
    min_tokens: Optional[Int64] = 0
    skip_special_tokens: Optional[bool] = True
    spaces_between_special_tokens: Optional[bool] = True
    truncate_prompt_tokens: Optional[Int64] = None
    prompt_logprobs: Optional[Int64] = None
    echo: Optional[bool] = False

    # structured output (openai/structured_output.py): at most one of these per request
    response_format: Optional[ResponseFormat] = None
    guided_json: Optional[Union[str, dict[str, Any]]] = None
    guided_regex: Optional[str] = None
    guided_choice: Optional[list[str]] = None
    guided_grammar: Optional[str] = None
    guided_decoding_backend: Optional[str] = None
    guided_whitespace_pattern: Optional[str] = None
    structured_outputs: Optional[dict[str, Any]] = None   # vLLM's newer form: {"json": ..}, ..


class CompletionRequest(_SamplingFields):
    prompt: Union[str, list[str], list[TokenId], list[list[TokenId]]]
    max_tokens: Optional[Int64] = 16
    logprobs: Optional[Int64] = None
    suffix: Optional[str] = None


class ContentPart(OpenAIBaseModel):
    type: str = "text"
    text: Optional[str] = None


class ChatMessage(OpenAIBaseModel):
    role: str
    content: Optional[Union[str, list[ContentPart]]] = None
    name: Optional[str] = None
    tool_calls: Optional[list[dict[str, Any]]] = None  # an assistant's earlier calls
    tool_call_id: Optional[str] = None                  # role "tool": the call answered


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage]
    temperature: Optional[float] = 0.7  # vLLM's default for chat
    # What current OpenAI clients send instead of max_tokens; with both set the smaller wins.
    max_completion_tokens: Optional[Int64] = None
    logprobs: Optional[bool] = False
    top_logprobs: Optional[Int64] = 0
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Optional[Union[str, dict[str, Any]]] = None
    functions: Optional[list[dict[str, Any]]] = None
    function_call: Optional[Union[str, dict[str, Any]]] = None
    parallel_tool_calls: Optional[bool] = None
    add_generation_prompt: Optional[bool] = True
    continue_final_message: Optional[bool] = False
    add_special_tokens: Optional[bool] = False
    chat_template: Optional[str] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None
    documents: Optional[list[dict[str, Any]]] = None


class TokenizeRequest(OpenAIBaseModel):
    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[list[ChatMessage]] = None
    add_special_tokens: Optional[bool] = True
    add_generation_prompt: Optional[bool] = True
    continue_final_message: Optional[bool] = False
    chat_template: Optional[str] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None


class DetokenizeRequest(OpenAIBaseModel):
    model: Optional[str] = None
    tokens: list[TokenId]


class EmbeddingRequest(OpenAIBaseModel):
    """OpenAI's embeddings body (plus vLLM's priority and add_special_tokens)."""

    model: Optional[str] = None
    input: Union[str, list[str], list[TokenId], list[list[TokenId]]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[Int64] = None
    user: Optional[str] = None
    priority: Optional[Int64] = 0
    add_special_tokens: Optional[bool] = True


def now() -> int:
    return int(time.time())


ErrorType = Literal["invalid_request_error", "authentication_error", "not_found_error",
                    "method_not_allowed", "internal_server_error", "service_unavailable"]
