"""Incremental scanning of JSON tool-call objects in partly generated text.

A parser sees the model's text grow token by token. These helpers say, for text that may
stop anywhere, how far a JSON value reaches (complete, still open, or malformed) and what
a `{"name": ..., "arguments" | "parameters": {...}}` object holds so far. The arguments
are kept as the model's own text (a raw slice), so what a stream sends is always a prefix
of the final arguments string.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Optional

WHITESPACE = " \t\r\n"
ARGUMENT_KEYS = ("arguments", "parameters")
_SCALAR_END = re.compile(r"[,\]}\s]")


class Malformed(ValueError):
    """The text cannot become the expected JSON, whatever follows."""


@dataclass
class PartialCall:
    """One tool call as far as the text goes: the name once its string is closed, the
    arguments' text so far (a prefix of the final one), complete when its object closed."""

    name: Optional[str] = None
    arguments: str = ""
    complete: bool = False


def skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in WHITESPACE:
        i += 1
    return i


def scan_string(text: str, i: int) -> Optional[int]:
    """End (exclusive) of the JSON string starting at text[i] == '"'; None if still open."""
    j, n = i + 1, len(text)
    while j < n:
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == '"':
            return j + 1
        j += 1
    return None


def scan_value(text: str, i: int) -> Optional[int]:
    """End (exclusive) of the JSON value starting at text[i]; None if the text stops inside
    it. Raises Malformed on brackets that do not match. Only the value's extent is found
    here; json.loads checks it once complete."""
    n = len(text)
    c = text[i]
    if c == '"':
        return scan_string(text, i)
    if c in "{[":
        stack = []
        j = i
        while j < n:
            ch = text[j]
            if ch == '"':
                end = scan_string(text, j)
                if end is None:
                    return None
                j = end
                continue
            if ch in "{[":
                stack.append("}" if ch == "{" else "]")
            elif ch in "}]":
                if not stack or stack.pop() != ch:
                    raise Malformed(f"unbalanced {ch!r}")
                if not stack:
                    return j + 1
            j += 1
        return None
    m = _SCALAR_END.search(text, i)
    if m is None:
        return None  # a number or literal that may still grow
    if m.start() == i:
        raise Malformed(f"unexpected {c!r}")
    return m.start()


def arguments_text(raw: str, value: object) -> str:
    """The arguments string of a complete call: the model's own object text, or, when the
    model wrote the arguments as a JSON string holding an object, that string's content."""
    if isinstance(value, dict):
        return raw
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except ValueError:
            raise Malformed("arguments string is not JSON") from None
        if isinstance(decoded, dict):
            return value
    raise Malformed("arguments must be a JSON object")


def scan_call_object(text: str, i: int) -> tuple[PartialCall, Optional[int]]:
    """The tool-call object starting at text[i] == '{': (what it holds so far, its end or
    None while open). Raises Malformed when it cannot be a tool call."""
    n = len(text)
    call = PartialCall()
    args_raw: Optional[str] = None
    j = i + 1
    expect_key = True
    while True:
        j = skip_ws(text, j)
        if j >= n:
            return call, None
        c = text[j]
        if c == "}":
            end = j + 1
            break
        if not expect_key:
            if c != ",":
                raise Malformed(f"expected ',' or '}}', got {c!r}")
            j = skip_ws(text, j + 1)
            if j >= n:
                return call, None
            c = text[j]
        if c != '"':
            raise Malformed(f"expected a key, got {c!r}")
        key_end = scan_string(text, j)
        if key_end is None:
            return call, None
        try:
            key = json.loads(text[j:key_end])
        except ValueError:   # e.g. an invalid escape such as \{
            raise Malformed("invalid JSON key") from None
        j = skip_ws(text, key_end)
        if j >= n:
            return call, None
        if text[j] != ":":
            raise Malformed("expected ':'")
        j = skip_ws(text, j + 1)
        if j >= n:
            return call, None
        value_end = scan_value(text, j)
        if key in ARGUMENT_KEYS and text[j] == "{":
            # streamed as it grows: the raw slice so far is a prefix of the final one
            call.arguments = text[j:value_end] if value_end is not None else text[j:]
        if value_end is None:
            return call, None
        raw = text[j:value_end]
        try:
            value = json.loads(raw)
        except ValueError:
            raise Malformed(f"invalid JSON value for {key!r}") from None
        if key == "name":
            if not isinstance(value, str) or not value:
                raise Malformed("name must be a non-empty string")
            call.name = value
        elif key in ARGUMENT_KEYS:
            args_raw = arguments_text(raw, value)
        j = value_end
        expect_key = False
    if call.name is None:
        raise Malformed("tool call without a name")
    call.arguments = args_raw if args_raw is not None else "{}"
    call.complete = True
    return call, end


def scan_call_array(text: str, i: int) -> tuple[list[PartialCall], Optional[int]]:
    """The JSON array of tool-call objects starting at text[i] == '[': (the calls so far,
    the array's end or None while open). Raises Malformed."""
    n = len(text)
    calls: list[PartialCall] = []
    j = i + 1
    while True:
        j = skip_ws(text, j)
        if j >= n:
            return calls, None
        if text[j] == "]" and not calls:
            return calls, j + 1
        if text[j] != "{":
            raise Malformed(f"expected a tool-call object, got {text[j]!r}")
        call, end = scan_call_object(text, j)
        calls.append(call)
        if end is None:
            return calls, None
        j = skip_ws(text, end)
        if j >= n:
            return calls, None
        if text[j] == "]":
            return calls, j + 1
        if text[j] != ",":
            raise Malformed(f"expected ',' or ']', got {text[j]!r}")
        j += 1
