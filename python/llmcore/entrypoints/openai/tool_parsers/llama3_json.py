"""Llama 3.x JSON format: optional `<|python_tag|>`, then JSON objects
`{"name": ..., "parameters" | "arguments": {...}}` separated by `;`. Without the tag the
output must start with `{` to be calls; text before the tag or after the calls is content."""

from __future__ import annotations

from llmcore.entrypoints.openai.tool_parsers.base import Scan, ToolParser, held_prefix
from llmcore.entrypoints.openai.tool_parsers.json_scan import Malformed, scan_call_object, skip_ws
from llmcore.entrypoints.openai.tool_parsers.registry import register_tool_parser

PYTHON_TAG = "<|python_tag|>"


@register_tool_parser("llama3_json")
class Llama3JsonToolParser(ToolParser):
    keeps_special_tokens = True

    def scan(self, text: str) -> Scan:
        n = len(text)
        k = text.find(PYTHON_TAG)
        j = skip_ws(text, 0)
        if k > j and text[j] == "{":
            k = -1   # calls from the start: a later tag is text after them, as it streamed
        if k >= 0:
            content, pos = text[:k], k + len(PYTHON_TAG)
        else:
            j = skip_ws(text, 0)
            if j >= n or text[j] != "{":
                return Scan(text[:n - held_prefix(text, PYTHON_TAG)], [])
            content, pos = text[:j], j
        calls = []
        while True:
            j = skip_ws(text, pos)
            if j >= n:
                break
            if text[j] != "{":
                if not calls:
                    return Scan(content, calls, malformed=True)
                content += text[j:]  # text after the calls
                break
            try:
                call, end = scan_call_object(text, j)
            except Malformed:
                return Scan(content, calls, malformed=True)
            calls.append(call)
            if end is None:
                break
            j = skip_ws(text, end)
            if j < n and text[j] == ";":
                pos = j + 1
                continue
            content += text[end:]
            break
        return Scan(content, calls)
