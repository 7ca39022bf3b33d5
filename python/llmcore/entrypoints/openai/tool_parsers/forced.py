"""Parsers of the output of a forced tool choice (guided decoding wrote it, so it has no
markup): a named function's arguments object, or `tool_choice: "required"`'s JSON array
of `{"name": ..., "parameters": {...}}`. Not registered: the request picks them."""

from __future__ import annotations

from typing import Optional

from llmcore.entrypoints.openai.tool_parsers.base import Scan, ToolParser
from llmcore.entrypoints.openai.tool_parsers.json_scan import (Malformed, PartialCall,
                                                               scan_call_array, skip_ws)


class NamedToolCallParser(ToolParser):
    """The whole output is the arguments of `function_name`."""

    def __init__(self, function_name: str, tools: Optional[list[dict]] = None):
        super().__init__(tools)
        self.function_name = function_name

    def scan(self, text: str) -> Scan:
        return Scan("", [PartialCall(self.function_name, text, complete=True)])


class RequiredToolCallsParser(ToolParser):
    """The output is a JSON array of one or more calls."""

    def scan(self, text: str) -> Scan:
        j = skip_ws(text, 0)
        if j >= len(text):
            return Scan("", [PartialCall()])
        if text[j] != "[":
            return Scan("", [], malformed=True)
        try:
            calls, end = scan_call_array(text, j)
        except Malformed:
            return Scan("", [], malformed=True)
        if end is None:
            if not calls or calls[-1].complete:
                calls.append(PartialCall())  # the array is still open
            return Scan("", calls)
        return Scan(text[end:], calls)
