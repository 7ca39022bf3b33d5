"""Mistral format: `[TOOL_CALLS]` then a JSON array of `{"name": ..., "arguments": {...}}`.
Text before the token and after the array is content. Call ids are 9 alphanumerics, the
only ids Mistral's chat templates accept."""

from __future__ import annotations

from llmcore.entrypoints.openai.tool_parsers.base import (Scan, ToolParser, held_prefix,
                                                          random_alphanumeric)
from llmcore.entrypoints.openai.tool_parsers.json_scan import Malformed, scan_call_array, skip_ws
from llmcore.entrypoints.openai.tool_parsers.registry import register_tool_parser

TOOL_CALLS = "[TOOL_CALLS]"


@register_tool_parser("mistral")
class MistralToolParser(ToolParser):
    keeps_special_tokens = True

    def make_tool_call_id(self) -> str:
        return random_alphanumeric(9)

    def scan(self, text: str) -> Scan:
        k = text.find(TOOL_CALLS)
        if k < 0:
            return Scan(text[:len(text) - held_prefix(text, TOOL_CALLS)], [])
        content = text[:k]
        j = skip_ws(text, k + len(TOOL_CALLS))
        if j >= len(text):
            return Scan(content, [])
        if text[j] != "[":
            return Scan(content, [], malformed=True)
        try:
            calls, end = scan_call_array(text, j)
        except Malformed:
            return Scan(content, [], malformed=True)
        if end is not None and not calls:
            # "[TOOL_CALLS][]" calls nothing: the text stays content, as it does unary
            return Scan(content, [], malformed=True)
        if end is not None:
            content += text[end:]
        return Scan(content, calls)
