"""Tool calling in chat completions: checking `tools` / `tool_choice`, forcing calls
through guided decoding, and shaping the calls parsed from the output into OpenAI's
message and stream-delta formats.

- `"none"`: no calls are parsed (the tools still reach the chat template, as in vLLM);
- `"auto"`: the server's `--tool-call-parser` finds calls in whatever the model wrote
  (needs `--enable-auto-tool-choice`);
- a named function: guided decoding makes the model write an object valid against that
  function's `parameters`, which becomes the call's arguments;
- `"required"`: guided decoding makes it write a JSON array of one or more
  `{"name": <one of the tools>, "parameters": <its schema>}` (one, with
  `parallel_tool_calls: false`), each becoming a call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from llmcore.entrypoints.openai.errors import APIError
from llmcore.entrypoints.openai.structured_output import guided_field
from llmcore.entrypoints.openai.tool_parsers import DeltaMessage, DeltaToolCall, ToolParser
from llmcore.entrypoints.openai.tool_parsers.forced import (NamedToolCallParser,
                                                            RequiredToolCallsParser)
from llmcore.sampling_params import GuidedDecodingParams
from llmcore.structured_output.spec import spec_from_params

AUTO_NEEDS_FLAGS = ('"auto" tool choice requires --enable-auto-tool-choice and '
                    '--tool-call-parser to be set')
_NAMED_USAGE = 'Correct usage: `{"type": "function", "function": {"name": "my_function"}}`'
_EMPTY_PARAMETERS = {"type": "object", "properties": {}}


@dataclass
class ToolChoice:
    """What a chat request asked of tools, checked."""

    mode: str = "none"                 # "none" | "auto" | "named" | "required"
    tools: list[dict] = field(default_factory=list)
    function_name: Optional[str] = None  # mode "named"
    guided: Optional[GuidedDecodingParams] = None  # named / required: the forced shape
    max_calls: Optional[int] = None    # parallel_tool_calls=false: 1
    parser_cls: Optional[type[ToolParser]] = None  # mode "auto"

    def new_parser(self) -> Optional[ToolParser]:
        """A parser for one choice's output (None: the output is plain content)."""
        if self.mode == "named":
            return NamedToolCallParser(self.function_name, self.tools)
        if self.mode == "required":
            return RequiredToolCallsParser(self.tools, max_calls=self.max_calls)
        if self.mode == "auto":
            return self.parser_cls(self.tools, max_calls=self.max_calls)
        return None

    @property
    def keeps_special_tokens(self) -> bool:
        return self.mode == "auto" and self.parser_cls.keeps_special_tokens


def _check_tool(i: int, tool: Any) -> dict:
    where = f"tools[{i}]"
    if not isinstance(tool, dict):
        raise APIError(f"{where} must be an object", 400, param="tools")
    kind = tool.get("type", "function")
    if kind != "function":
        raise APIError(f"{where}.type must be 'function', got {kind!r}", 400, param="tools")
    function = tool.get("function")
    if not isinstance(function, dict):
        raise APIError(f"{where}.function must be an object", 400, param="tools")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise APIError(f"{where}.function.name must be a non-empty string", 400, param="tools")
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise APIError(f"{where}.function.parameters must be a JSON schema object, got "
                       f"{type(parameters).__name__}", 400, param="tools")
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise APIError(f"{where}.function.description must be a string", 400, param="tools")
    return {**tool, "type": "function"}


def _parameters(tool: dict) -> dict:
    return tool["function"].get("parameters") or _EMPTY_PARAMETERS


def required_schema(tools: list[dict], parallel_tool_calls: bool) -> dict:
    """JSON schema of `tool_choice: "required"` output (vLLM's shape): an array of calls,
    each naming one tool and carrying arguments valid against that tool's schema. `$defs`
    of the tools move to the root, where their `#/$defs/...` references point."""
    defs: dict[str, Any] = {}
    alternatives = []
    for tool in tools:
        params = dict(_parameters(tool))
        for name, schema in (params.pop("$defs", None) or {}).items():
            if name in defs and defs[name] != schema:
                raise APIError(f"tools define $defs {name!r} differently; tool_choice "
                               "'required' needs them to agree", 400, param="tools")
            defs[name] = schema
        # no other keys: a small model would otherwise ramble on in made-up ones
        alternatives.append({"properties": {"name": {"type": "string",
                                                     "enum": [tool["function"]["name"]]},
                                            "parameters": params},
                             "required": ["name", "parameters"], "additionalProperties": False})
    schema: dict[str, Any] = {"type": "array", "minItems": 1,
                              "items": {"type": "object", "anyOf": alternatives}}
    if not parallel_tool_calls:
        schema["maxItems"] = 1
    if defs:
        schema["$defs"] = defs
    return schema


def check_tool_choice(request: Any, enable_auto_tool_choice: bool,
                      parser_cls: Optional[type[ToolParser]]) -> ToolChoice:
    """The request's tools and tool_choice, checked (APIError 400 otherwise)."""
    if request.functions or request.function_call not in (None, "none"):
        raise APIError("functions / function_call (deprecated) are not supported; use tools "
                       "and tool_choice", 400,
                       param="functions" if request.functions else "function_call")
    raw_tools = request.tools
    choice = request.tool_choice
    if choice is None:
        # vLLM's default: "auto" when tools are given
        choice = "auto" if raw_tools else "none"
    if choice == "none":
        return ToolChoice("none", [_check_tool(i, t) for i, t in enumerate(raw_tools or [])])
    if raw_tools is None:
        raise APIError("When using `tool_choice`, `tools` must be set.", 400, param="tool_choice")
    tools = [_check_tool(i, t) for i, t in enumerate(raw_tools)]
    parallel = request.parallel_tool_calls is not False
    max_calls = None if parallel else 1
    if isinstance(choice, str):
        if choice == "required":
            if not tools:  # OpenAI's behaviour: like "none"
                return ToolChoice("none")
            return ToolChoice("required", tools, max_calls=max_calls,
                              guided=_guided(request, required_schema(tools, parallel)))
        if choice == "auto":
            if not (enable_auto_tool_choice and parser_cls is not None):
                raise APIError(AUTO_NEEDS_FLAGS, 400, param="tool_choice")
            return ToolChoice("auto", tools, max_calls=max_calls, parser_cls=parser_cls)
        raise APIError(f"Invalid value for `tool_choice`: {choice!r}! Only named tools, "
                       '"none", "auto" or "required" are supported.', 400, param="tool_choice")
    if not isinstance(choice, dict):
        raise APIError(f"Invalid value for `tool_choice`. {_NAMED_USAGE}", 400,
                       param="tool_choice")
    if choice.get("type", "function") != "function":
        raise APIError(f"tool_choice.type must be 'function'. {_NAMED_USAGE}", 400,
                       param="tool_choice")
    function = choice.get("function")
    if not isinstance(function, dict):
        raise APIError(f"Invalid value for `function` in `tool_choice`! {_NAMED_USAGE}", 400,
                       param="tool_choice")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise APIError(f"Expected a non-empty string `name` in `function` in `tool_choice`! "
                       f"{_NAMED_USAGE}", 400, param="tool_choice")
    matches = [t for t in tools if t["function"]["name"] == name]
    if not matches:
        raise APIError("The tool specified in `tool_choice` does not match any of the "
                       f"specified `tools` ({name!r})", 400, param="tool_choice")
    return ToolChoice("named", tools, function_name=name,
                      guided=_guided(request, _parameters(matches[0])))


def _guided(request: Any, schema: dict) -> GuidedDecodingParams:
    other = guided_field(request)
    if other is not None:
        raise APIError(f"{other} cannot be combined with a named or 'required' tool_choice "
                       "(which sets guided decoding itself)", 400, param=other)
    if getattr(request, "use_beam_search", False):
        raise APIError("use_beam_search cannot be combined with a named or 'required' "
                       "tool_choice (guided decoding)", 400, param="use_beam_search")
    try:
        guided = GuidedDecodingParams(json=schema,
                                      backend=getattr(request, "guided_decoding_backend", None))
    except ValueError as e:
        raise APIError(str(e), 400, param="guided_decoding_backend") from None
    try:
        spec_from_params(guided)  # the checks every front end runs: a valid, bounded schema
    except ValueError as e:
        raise APIError(f"tools: a function's parameters cannot force a call: {e}", 400,
                       param="tools") from None
    return guided


# ---------------------------------------------------------------------- messages in
def template_messages_tool_fields(message: Any, index: int) -> dict:
    """A request message's tool fields as chat templates expect them: `tool_calls` with
    arguments as objects (as transformers' templates read them), `tool_call_id`."""
    out: dict[str, Any] = {}
    calls = getattr(message, "tool_calls", None)
    if calls is not None:
        if not isinstance(calls, list):
            raise APIError(f"messages[{index}].tool_calls must be a list", 400, param="messages")
        converted = []
        for k, call in enumerate(calls):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise APIError(f"messages[{index}].tool_calls[{k}] needs function.name", 400,
                               param="messages")
            arguments = function.get("arguments", "{}")
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except ValueError:
                    pass  # left as the text the client sent
            converted.append({**call, "function": {**function, "arguments": arguments}})
        out["tool_calls"] = converted
    call_id = getattr(message, "tool_call_id", None)
    if call_id is not None:
        if not isinstance(call_id, str):
            raise APIError(f"messages[{index}].tool_call_id must be a string", 400,
                           param="messages")
        out["tool_call_id"] = call_id
    return out


# ---------------------------------------------------------------------- outputs
def finish_reason(engine_reason: Optional[str], tools_called: bool) -> Optional[str]:
    """"tool_calls" when the output ended normally with calls in it."""
    return "tool_calls" if tools_called and engine_reason == "stop" else engine_reason


def message_fields(choice: ToolChoice, text: str) -> tuple[dict, bool]:
    """(the message's content and tool_calls, whether it holds calls) for a whole output."""
    parser = choice.new_parser()
    if parser is None:
        return {"content": text, "tool_calls": []}, False
    result = parser.extract_tool_calls(text)
    return ({"content": result.content, "tool_calls": [c.to_openai() for c in result.tool_calls]},
            result.tools_called)


def _merge(first: Optional[DeltaMessage], second: Optional[DeltaMessage]
           ) -> Optional[DeltaMessage]:
    if first is None or second is None:
        return first or second
    merged = DeltaMessage((first.content or "") + (second.content or "") or None,
                          list(first.tool_calls))
    for piece in second.tool_calls:
        last = merged.tool_calls[-1] if merged.tool_calls else None
        if last is not None and last.index == piece.index and piece.name is None:
            merged.tool_calls[-1] = DeltaToolCall(last.index, last.arguments + piece.arguments,
                                                  last.id, last.name)
        else:
            merged.tool_calls.append(piece)
    return merged


class ChoiceStreams:
    """Per streamed choice, the delta to send for its new text: content, or tool-call
    pieces in OpenAI's format."""

    def __init__(self, choice: ToolChoice):
        self.choice = choice
        self._parsers: dict[int, Optional[ToolParser]] = {}

    def _parser(self, index: int) -> Optional[ToolParser]:
        if index not in self._parsers:
            self._parsers[index] = self.choice.new_parser()
        return self._parsers[index]

    def delta(self, index: int, text: str, new_text: str, finished: bool) -> dict:
        """The delta for choice `index` whose output is now `text` (`new_text` at its end);
        `finished`: this is its last one. Empty when there is nothing to send."""
        parser = self._parser(index)
        if parser is None:
            return {"content": new_text} if new_text or not finished else {}
        previous = text[:len(text) - len(new_text)]
        message = parser.extract_tool_calls_streaming(previous, text, new_text)
        if finished:
            message = _merge(message, parser.finish_streaming(text))
        return message.to_openai() if message is not None else {}

    def tools_called(self, index: int) -> bool:
        parser = self._parsers.get(index)
        return parser is not None and parser.tools_called

