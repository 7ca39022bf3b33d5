"""Hermes / Qwen format: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, any
number of them, with text before, between and after."""

from __future__ import annotations

from llmcore.entrypoints.openai.tool_parsers.base import Scan, ToolParser, held_prefix
from llmcore.entrypoints.openai.tool_parsers.json_scan import Malformed, scan_call_object, skip_ws
from llmcore.entrypoints.openai.tool_parsers.registry import register_tool_parser

START, END = "<tool_call>", "</tool_call>"


@register_tool_parser("hermes")
class HermesToolParser(ToolParser):
    keeps_special_tokens = True

    def scan(self, text: str) -> Scan:
        content: list[str] = []
        calls = []
        n, pos = len(text), 0
        while True:
            k = text.find(START, pos)
            if k < 0:
                tail = text[pos:]
                content.append(tail[:len(tail) - held_prefix(tail, START)])
                break
            content.append(text[pos:k])
            j = skip_ws(text, k + len(START))
            if j >= n:
                break
            if text[j] != "{":
                return Scan("".join(content), calls, malformed=True)
            try:
                call, end = scan_call_object(text, j)
            except Malformed:
                return Scan("".join(content), calls, malformed=True)
            calls.append(call)
            if end is None:
                break
            j = skip_ws(text, end)
            if j >= n:
                break  # the closing tag may follow; a last call without one is accepted
            if text.startswith(END, j):
                pos = j + len(END)
                continue
            if not END.startswith(text[j:]):
                return Scan("".join(content), calls, malformed=True)
            break
        return Scan("".join(content), calls)
