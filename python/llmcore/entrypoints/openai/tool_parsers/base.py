"""What every tool-call parser shares: the result types, and streaming derived from one scan.

A parser subclass writes one method, `scan(text)`: the text outside the calls so far and
the calls so far (PartialCall), for text that may stop anywhere. Both directions follow:

- unary `extract_tool_calls(text)`: the scan of the whole text. Any malformed or
  unfinished call makes the whole text plain content (never an error);
- streaming `extract_tool_calls_streaming(previous, current, delta)`: the scan of the
  text so far, minus what was already sent. Scans only grow (content is appended to, a
  call's name appears once, its arguments only lengthen), so the deltas are prefixes of
  the unary result; `finish_streaming(text)` sends the rest of the unary result, so the
  deltas of a stream, concatenated, equal it.

Content around the calls keeps its text except trailing whitespace (held back while
streaming: it may be the gap before a call). Parser instances hold one stream's state:
make one per choice.
"""

from __future__ import annotations

import secrets
import string
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

from llmcore.entrypoints.openai.tool_parsers.json_scan import PartialCall


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object's text, as OpenAI's function.arguments

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ExtractedToolCalls:
    content: Optional[str]
    tool_calls: list[ToolCall] = field(default_factory=list)

    @property
    def tools_called(self) -> bool:
        return bool(self.tool_calls)


@dataclass
class DeltaToolCall:
    """One streamed piece of call `index`: id, type and name only in its first piece."""

    index: int
    arguments: str
    id: Optional[str] = None
    name: Optional[str] = None

    def to_openai(self) -> dict:
        if self.name is None:
            return {"index": self.index, "function": {"arguments": self.arguments}}
        return {"index": self.index, "id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class DeltaMessage:
    content: Optional[str] = None
    tool_calls: list[DeltaToolCall] = field(default_factory=list)

    def to_openai(self) -> dict:
        out: dict[str, Any] = {}
        if self.content:
            out["content"] = self.content
        if self.tool_calls:
            out["tool_calls"] = [t.to_openai() for t in self.tool_calls]
        return out


@dataclass
class Scan:
    """A parser's view of some text: content outside the calls (in order), the calls, and
    whether the text is malformed (cannot hold well-formed calls, whatever follows)."""

    content: str
    calls: list[PartialCall]
    malformed: bool = False


def held_prefix(text: str, token: str) -> int:
    """Length of the longest end of `text` that is a proper start of `token`: content that
    must wait, as it may be the beginning of the token."""
    for k in range(min(len(token) - 1, len(text)), 0, -1):
        if text.endswith(token[:k]):
            return k
    return 0


class ToolParser:
    """Base class; subclasses set `name` (via the registry) and implement scan()."""

    # Special tokens the format relies on: generation keeps them in the text.
    keeps_special_tokens = False

    def __init__(self, tools: Optional[list[dict]] = None, max_calls: Optional[int] = None):
        self.tools = tools or []
        # a call to a function the request did not offer is not a call (e.g. JSON output
        # that happens to have a "name" key)
        self._tool_names = {t.get("function", {}).get("name") for t in self.tools}
        self.max_calls = max_calls  # parallel_tool_calls=false: 1
        self._sent_content = ""
        self._sent_calls: list[tuple[str, str, str]] = []  # (id, name, arguments sent)

    # ------------------------------------------------------------------ to implement
    def scan(self, text: str) -> Scan:
        raise NotImplementedError

    def _scan_checked(self, text: str) -> Scan:
        result = self.scan(text)
        if self._tool_names and any(c.name is not None and c.name not in self._tool_names
                                    for c in result.calls):
            result.malformed = True
        return result

    # ------------------------------------------------------------------ ids
    def make_tool_call_id(self) -> str:
        return f"chatcmpl-tool-{uuid.uuid4().hex}"

    # ------------------------------------------------------------------ unary
    def extract_tool_calls(self, model_output: str) -> ExtractedToolCalls:
        result = self._scan_checked(model_output)
        calls = result.calls[:self.max_calls] if self.max_calls else result.calls
        if result.malformed or not calls or not all(c.complete for c in result.calls):
            return ExtractedToolCalls(content=model_output)
        content = result.content.rstrip()
        return ExtractedToolCalls(content=content or None, tool_calls=[
            ToolCall(self.make_tool_call_id(), c.name, c.arguments) for c in calls])

    # ------------------------------------------------------------------ streaming
    def extract_tool_calls_streaming(self, previous_text: str, current_text: str,
                                     delta_text: str) -> Optional[DeltaMessage]:
        """What to send now for the text so far (None: nothing yet)."""
        result = self._scan_checked(current_text)
        if result.malformed and not self._sent_calls:
            # no call can come out of this text: it streams as the content it will be
            return self._advance(current_text.rstrip(), [])
        return self._advance(result.content.rstrip(), result.calls)

    def finish_streaming(self, final_text: str) -> Optional[DeltaMessage]:
        """The rest of the unary result, once generation ended. Calls already sent cannot
        be taken back: if the text turned out malformed or cut short after some were,
        nothing more is sent (unary would return that text as plain content)."""
        final = self.extract_tool_calls(final_text)
        content = final.content or ""
        consistent = (len(final.tool_calls) >= len(self._sent_calls)
                      and all(final.tool_calls[i].name == name
                              and final.tool_calls[i].arguments.startswith(sent)
                              for i, (_, name, sent) in enumerate(self._sent_calls)))
        if not consistent:
            return None
        return self._advance(content, [PartialCall(c.name, c.arguments, True)
                                       for c in final.tool_calls])

    def _advance(self, content: str, calls: list[PartialCall]) -> Optional[DeltaMessage]:
        delta = DeltaMessage()
        if content.startswith(self._sent_content) and len(content) > len(self._sent_content):
            delta.content = content[len(self._sent_content):]
            self._sent_content = content
        if self.max_calls:
            calls = calls[:self.max_calls]
        for index, call in enumerate(calls):
            if index < len(self._sent_calls):
                call_id, name, sent = self._sent_calls[index]
                if len(call.arguments) > len(sent) and call.arguments.startswith(sent):
                    delta.tool_calls.append(DeltaToolCall(index, call.arguments[len(sent):]))
                    self._sent_calls[index] = (call_id, name, call.arguments)
                continue
            if call.name is None:
                break  # calls are sent in order: a later one waits for this one's name
            call_id = self.make_tool_call_id()
            self._sent_calls.append((call_id, call.name, call.arguments))
            delta.tool_calls.append(DeltaToolCall(index, call.arguments, call_id, call.name))
        if delta.content is None and not delta.tool_calls:
            return None
        return delta

    @property
    def tools_called(self) -> bool:
        """Whether this stream has sent a tool call."""
        return bool(self._sent_calls)


def random_alphanumeric(length: int) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))
