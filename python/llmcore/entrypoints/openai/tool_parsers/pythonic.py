"""Pythonic format (Llama 3.2 / 4): a Python list of calls with keyword arguments,
`[get_weather(city="Paris"), get_time()]`, optionally inside `<|python_start|>` ...
`<|python_end|>`. Read with Python's `ast` (literals only, never evaluated). The list must
open the output; text after it is content. A call is streamed whole once it is closed."""

from __future__ import annotations

import ast
import json
import re
from typing import Optional

from llmcore.entrypoints.openai.tool_parsers.base import Scan, ToolParser, held_prefix
from llmcore.entrypoints.openai.tool_parsers.json_scan import Malformed, PartialCall, skip_ws
from llmcore.entrypoints.openai.tool_parsers.registry import register_tool_parser

START, END = "<|python_start|>", "<|python_end|>"
_LIST_OF_CALLS = re.compile(r"\[\s*[A-Za-z_][\w.]*\s*\(")
_MAYBE_LIST_OF_CALLS = re.compile(r"\[\s*(?:[A-Za-z_][\w.]*\s*)?$")  # may still become one


def _string_end(text: str, i: int) -> Optional[int]:
    """End of the Python string literal opening at text[i]; None while open."""
    quote = text[i:i + 3] if text[i:i + 3] in ("'''", '"""') else text[i]
    k, n = i + len(quote), len(text)
    while k < n:
        if text[k] == "\\":
            k += 2
            continue
        if text.startswith(quote, k):
            return k + len(quote)
        if len(quote) == 1 and text[k] == "\n":
            raise Malformed("newline in a string")
        k += 1
    return None


def _elements(text: str, i: int) -> tuple[list[str], Optional[int]]:
    """The complete top-level elements of the list opening at text[i] == '[' and the
    list's end (None while open)."""
    elements: list[str] = []
    depth, start, k, n = 0, i + 1, i, len(text)
    while k < n:
        c = text[k]
        if c in "'\"":
            end = _string_end(text, k)
            if end is None:
                return elements, None
            k = end
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                if text[start:k].strip():
                    elements.append(text[start:k])
                return elements, k + 1
        elif c == "," and depth == 1:
            elements.append(text[start:k])
            start = k + 1
        k += 1
    return elements, None


def _call(source: str) -> PartialCall:
    try:
        node = ast.parse(source.strip(), mode="eval").body
    except SyntaxError:
        raise Malformed("not a Python expression") from None
    if not isinstance(node, ast.Call) or node.args:
        raise Malformed("expected a call with keyword arguments only")
    name = ast.unparse(node.func)
    if not re.fullmatch(r"[A-Za-z_][\w.]*", name):
        raise Malformed("the called function must be a name")
    arguments = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise Malformed("**kwargs in a tool call")
        try:
            arguments[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise Malformed(f"argument {kw.arg!r} is not a literal") from None
    try:
        text = json.dumps(arguments, ensure_ascii=False)
    except (TypeError, ValueError):  # sets, bytes, complex numbers, nan...
        raise Malformed("arguments are not JSON values") from None
    return PartialCall(name, text, complete=True)


@register_tool_parser("pythonic")
class PythonicToolParser(ToolParser):
    keeps_special_tokens = True

    def scan(self, text: str) -> Scan:
        n = len(text)
        j = skip_ws(text, 0)
        if text.startswith(START, j):
            j = skip_ws(text, j + len(START))
        elif j < n and START.startswith(text[j:]):
            return Scan("", [])
        if j >= n:  # whitespace or the start tag so far
            return Scan("", [])
        head = text[j:j + 200]
        if not _LIST_OF_CALLS.match(head):
            if _MAYBE_LIST_OF_CALLS.match(head):
                return Scan("", [])
            return Scan(text[:n - held_prefix(text, START)], [])
        try:
            elements, end = _elements(text, j)
            calls = [_call(e) for e in elements]
        except Malformed:
            return Scan("", [], malformed=True)
        content = ""
        if end is None:
            calls.append(PartialCall())  # the list is still open
        else:
            rest = text[end:]
            k = skip_ws(rest, 0)
            if rest.startswith(END, k):
                rest = rest[k + len(END):]
            elif END.startswith(rest[k:]):
                rest = ""
            content += rest
        return Scan(content, calls)
