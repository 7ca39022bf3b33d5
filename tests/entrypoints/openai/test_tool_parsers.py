"""Tool-call parsers on recorded model outputs: unary results, and streams (cut at many
points) whose deltas, concatenated, equal the unary result."""

from __future__ import annotations

import json
import os
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmcore.entrypoints.openai.tool_parsers import (ToolParser, get_tool_parser,
                                                     resolve_tool_parser, tool_parser_names)
from llmcore.entrypoints.openai.tool_parsers.forced import (NamedToolCallParser,
                                                            RequiredToolCallsParser)

# plugins that other tests loaded stay registered in the process: other names may appear
KNOWN_PARSERS = r"known parsers: (.+, )?hermes, llama3_json, mistral, (.+, )?pythonic"
TOOLS = [{"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
         for name in ("get_current_weather", "get_time", "search")]

W = "get_current_weather"
# (parser, label, model output, expected content, expected calls as (name, arguments object))
RECORDED = [
    # --- hermes (Hermes-2-Pro / Qwen2.5)
    ("hermes", "one", '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": '
     '"San Francisco, CA", "unit": "fahrenheit"}}\n</tool_call>', None,
     [(W, {"location": "San Francisco, CA", "unit": "fahrenheit"})]),
    ("hermes", "several", '<tool_call>\n{"name": "get_current_weather", "arguments": '
     '{"location": "München"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": '
     '{"timezone": "Europe/Berlin"}}\n</tool_call>', None,
     [(W, {"location": "München"}), ("get_time", {"timezone": "Europe/Berlin"})]),
    ("hermes", "text around", "I'll look that up for you.\n<tool_call>\n{\"name\": \"search\", "
     "\"arguments\": {\"query\": \"say \\\"hi\\\" {now} </tool_call>\", \"filters\": {\"lang\": "
     "[\"en\", \"de\"], \"max\": 3}}}\n</tool_call>\nOne moment.",
     "I'll look that up for you.\n\nOne moment.",
     [("search", {"query": 'say "hi" {now} </tool_call>', "filters": {"lang": ["en", "de"],
                                                                    "max": 3}})]),
    ("hermes", "no arguments, no closing tag", '<tool_call>\n{"name": "get_time"}\n', None,
     [("get_time", {})]),
    ("hermes", "arguments as a string", '<tool_call>{"name": "get_time", "arguments": '
     '"{\\"timezone\\": \\"UTC\\"}"}</tool_call>', None, [("get_time", {"timezone": "UTC"})]),
    ("hermes", "plain text", "The weather in Paris is sunny, 24°C.  ",
     "The weather in Paris is sunny, 24°C.  ", []),
    # --- llama3_json (Llama 3.1 / 3.2)
    ("llama3_json", "one with tag", '<|python_tag|>{"name": "get_current_weather", '
     '"parameters": {"location": "San Francisco, CA", "unit": "celsius"}}', None,
     [(W, {"location": "San Francisco, CA", "unit": "celsius"})]),
    ("llama3_json", "one without tag", '{"name": "get_time", "parameters": {"timezone": '
     '"Asia/Tokyo"}}', None, [("get_time", {"timezone": "Asia/Tokyo"})]),
    ("llama3_json", "several", '<|python_tag|>{"name": "get_current_weather", "parameters": '
     '{"location": "Paris"}}; {"name": "get_time", "arguments": {"timezone": "CET"}}', None,
     [(W, {"location": "Paris"}), ("get_time", {"timezone": "CET"})]),
    ("llama3_json", "text around", 'Let me check the weather.<|python_tag|>{"name": '
     '"get_current_weather", "parameters": {"location": "Oslo"}}\nThat is all.',
     "Let me check the weather.\nThat is all.", [(W, {"location": "Oslo"})]),
    ("llama3_json", "plain text", "Paris is the capital of France.",
     "Paris is the capital of France.", []),
    # --- mistral
    ("mistral", "one", '[TOOL_CALLS][{"name": "get_current_weather", "arguments": '
     '{"location": "Paris, France", "unit": "celsius"}}]', None,
     [(W, {"location": "Paris, France", "unit": "celsius"})]),
    ("mistral", "several with text", 'Sure, checking both. [TOOL_CALLS] [{"name": '
     '"get_current_weather", "arguments": {"location": "Lyon"}}, {"name": "get_time", '
     '"arguments": {}}]', "Sure, checking both.", [(W, {"location": "Lyon"}), ("get_time", {})]),
    ("mistral", "plain text", "No tools needed [here].", "No tools needed [here].", []),
    # --- pythonic (Llama 3.2 / 4)
    ("pythonic", "one", '[get_current_weather(location="San Francisco, CA", '
     'unit="fahrenheit")]', None, [(W, {"location": "San Francisco, CA", "unit": "fahrenheit"})]),
    ("pythonic", "several", "[get_current_weather(location='Paris', days=3, metric=True, "
     "extra=None), get_time(timezone=\"UTC\"), search(query='a, b) [c]', tags=['x', 'y'], "
     "opts={'n': 1.5})]", None,
     [(W, {"location": "Paris", "days": 3, "metric": True, "extra": None}),
      ("get_time", {"timezone": "UTC"}),
      ("search", {"query": "a, b) [c]", "tags": ["x", "y"], "opts": {"n": 1.5}})]),
    ("pythonic", "tags and text after", '<|python_start|>[get_time()]<|python_end|> Done.',
     " Done.", [("get_time", {})]),
    ("pythonic", "plain text", "[1] is a citation, not a call.",
     "[1] is a citation, not a call.", []),
]

MALFORMED = [
    ("hermes", "not JSON", "<tool_call>\nget_current_weather(Paris)\n</tool_call>"),
    ("hermes", "unknown tool", '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'),
    ("hermes", "no name", '<tool_call>{"arguments": {"a": 1}}</tool_call>'),
    ("hermes", "arguments not an object", '<tool_call>{"name": "get_time", "arguments": 5}'
     "</tool_call>"),
    ("hermes", "missing brace", '<tool_call>\n{"name": "get_time", "arguments": {"a": 1}\n'
     "</tool_call>"),
    ("hermes", "cut short", '<tool_call>\n{"name": "get_time", "arguments": {"timezone": "U'),
    ("llama3_json", "JSON that is not a call", '{"city": "Paris", "population": 2100000}'),
    ("llama3_json", "a dict with a name", '{"name": "Alice", "age": 30}'),
    ("llama3_json", "code after the tag", "<|python_tag|>print(get_time())"),
    # hypothesis found it: the key's invalid escape (\{) raised JSONDecodeError
    ("llama3_json", "invalid escape in a key", '{"get_time\\{": 1}'),
    ("mistral", "not an array", '[TOOL_CALLS] {"name": "get_time", "arguments": {}}'),
    ("mistral", "trailing comma", '[TOOL_CALLS][{"name": "get_time", "arguments": {}}, ]'),
    # hypothesis found it: streamed, the empty list vanished from the content
    ("mistral", "an empty call list", "[TOOL_CALLS][], then text"),
    ("pythonic", "positional arguments", '[get_time("UTC")]'),
    ("pythonic", "not a literal", "[get_time(timezone=__import__('os').system('touch "
     "/tmp/llmcore-pwned'))]"),
    ("pythonic", "list not closed", "[get_time(timezone='UTC'), search(query='x'"),
]


def _parser(name: str, **kw) -> ToolParser:
    return get_tool_parser(name)(TOOLS, **kw)


def _stream(parser: ToolParser, text: str, cuts: list[int]) -> tuple:
    """Feed `text` cut at `cuts`; return (content, [(id, name, arguments)], deltas)."""
    content, calls, deltas = "", [], []
    previous = ""
    for end in [*cuts, len(text)]:
        current = text[:end]
        for delta in (parser.extract_tool_calls_streaming(previous, current,
                                                          current[len(previous):]),
                      parser.finish_streaming(text) if end == len(text) else None):
            if delta is None:
                continue
            deltas.append(delta)
            content += delta.content or ""
            for piece in delta.tool_calls:
                if piece.name is not None:  # a call's first piece: index, id, type and name
                    assert piece.index == len(calls) and piece.id
                    assert piece.to_openai()["type"] == "function"
                    calls.append([piece.id, piece.name, piece.arguments])
                else:
                    assert set(piece.to_openai()) == {"index", "function"}
                    calls[piece.index][2] += piece.arguments
        previous = current
    return content or None, [tuple(c) for c in calls], deltas


def _cuttings(text: str) -> list[list[int]]:
    rng = random.Random(len(text))
    token_like = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, len(text) // 4)))
    return [list(range(1, len(text))), list(range(3, len(text), 3)), token_like, []]


@pytest.mark.parametrize("name,label,text,content,calls", RECORDED,
                         ids=[f"{p}-{label}" for p, label, *_ in RECORDED])
def test_unary(name, label, text, content, calls):
    result = _parser(name).extract_tool_calls(text)
    assert result.content == content
    assert [(c.name, json.loads(c.arguments)) for c in result.tool_calls] == calls
    for c in result.tool_calls:
        assert isinstance(c.arguments, str)
        assert c.to_openai() == {"id": c.id, "type": "function",
                                 "function": {"name": c.name, "arguments": c.arguments}}
    assert len({c.id for c in result.tool_calls}) == len(calls)


@pytest.mark.parametrize("name,label,text,content,calls", RECORDED,
                         ids=[f"{p}-{label}" for p, label, *_ in RECORDED])
def test_streaming_equals_unary(name, label, text, content, calls):
    unary = _parser(name).extract_tool_calls(text)
    for cuts in _cuttings(text):
        got_content, got_calls, deltas = _stream(_parser(name), text, cuts)
        assert got_content == unary.content, cuts
        assert [(n, a) for _, n, a in got_calls] == [(c.name, c.arguments)
                                                     for c in unary.tool_calls], cuts
    if calls:  # arguments come in pieces, not only at the end
        _, _, deltas = _stream(_parser(name), text, list(range(1, len(text))))
        assert sum(len(d.tool_calls) for d in deltas) >= len(calls)


@pytest.mark.parametrize("name,label,text", MALFORMED, ids=[f"{p}-{l}" for p, l, _ in MALFORMED])
def test_malformed_is_plain_content(name, label, text):
    result = _parser(name).extract_tool_calls(text)
    assert result.content == text and result.tool_calls == []
    for cuts in _cuttings(text):
        content, calls, _ = _stream(_parser(name), text, cuts)
        if not calls:  # seen malformed before any call was announced: the same text
            assert content == text
        else:  # announced calls cannot be taken back; the stream still ends cleanly
            assert label in ("missing brace", "cut short", "trailing comma", "list not closed",
                             "arguments not an object")
    assert not os.path.exists("/tmp/llmcore-pwned")


_CALL = '{"name": "get_time", "arguments": {"timezone": "UTC"}}'


@pytest.mark.parametrize("text", [_CALL + "<|python_tag|>" + _CALL + "=</tool_call>",
                                  _CALL + _CALL + "<|python_tag|>" + _CALL])
def test_llama3_tag_after_leading_calls_streams_as_unary(text):
    """Hypothesis found these: output that starts with a call and has a <|python_tag|>
    later was parsed from the tag unary but from the start when streamed (the first call
    announced before the tag came)."""
    unary = _parser("llama3_json").extract_tool_calls(text)
    assert [c.name for c in unary.tool_calls] == ["get_time"]
    assert unary.content.startswith("<|python_tag|>") or unary.content.startswith(_CALL)
    for cuts in _cuttings(text):
        content, calls, _ = _stream(_parser("llama3_json"), text, cuts)
        assert content == unary.content
        assert [(n, a) for _, n, a in calls] == [(c.name, c.arguments) for c in unary.tool_calls]


def test_ids():
    hermes = _parser("hermes").extract_tool_calls(RECORDED[1][2])
    assert all(re.fullmatch(r"chatcmpl-tool-[0-9a-f]{32}", c.id) for c in hermes.tool_calls)
    mistral = _parser("mistral").extract_tool_calls(RECORDED[12][2])
    assert all(re.fullmatch(r"[A-Za-z0-9]{9}", c.id) for c in mistral.tool_calls)
    _, calls, _ = _stream(_parser("mistral"), RECORDED[12][2], [5, 40])
    assert all(re.fullmatch(r"[A-Za-z0-9]{9}", i) for i, _, _ in calls)


def test_one_call_when_parallel_calls_are_off():
    text = RECORDED[1][2]
    result = _parser("hermes", max_calls=1).extract_tool_calls(text)
    assert [c.name for c in result.tool_calls] == [W]
    _, calls, _ = _stream(_parser("hermes", max_calls=1), text, list(range(1, len(text), 2)))
    assert [n for _, n, _ in calls] == [W]


def test_forced_parsers():
    named = NamedToolCallParser("get_time", TOOLS)
    result = named.extract_tool_calls('{"timezone": "UTC"}')
    assert result.content is None and result.tool_calls[0].name == "get_time"
    assert result.tool_calls[0].arguments == '{"timezone": "UTC"}'
    text = ('[{"name": "get_time", "parameters": {"timezone": "UTC"}}, {"name": "search", '
            '"parameters": {"query": "x"}}]')
    required = RequiredToolCallsParser(TOOLS).extract_tool_calls(text)
    assert [(c.name, json.loads(c.arguments)) for c in required.tool_calls] == [
        ("get_time", {"timezone": "UTC"}), ("search", {"query": "x"})]
    for cuts in _cuttings(text):
        content, calls, _ = _stream(RequiredToolCallsParser(TOOLS), text, cuts)
        assert content is None and [(n, a) for _, n, a in calls] == [
            (c.name, c.arguments) for c in required.tool_calls]
    # cut short by max_tokens: no call in the unary result
    assert RequiredToolCallsParser(TOOLS).extract_tool_calls(text[:30]).tool_calls == []


def test_registry_and_plugin(tmp_path):
    assert set(tool_parser_names()) >= {"hermes", "llama3_json", "mistral", "pythonic"}
    with pytest.raises(ValueError, match=KNOWN_PARSERS):
        resolve_tool_parser(True, "no-such-parser", None)
    with pytest.raises(ValueError, match="--enable-auto-tool-choice needs --tool-call-parser"):
        resolve_tool_parser(True, None, None)
    assert resolve_tool_parser(False, None, None) is None
    plugin = tmp_path / "my_parser.py"
    plugin.write_text(
        "from llmcore.entrypoints.openai.tool_parsers import (PartialCall, Scan, ToolParser,\n"
        "                                                     register_tool_parser)\n\n"
        "@register_tool_parser('every_line_a_call')\n"
        "class EveryLine(ToolParser):\n"
        "    def scan(self, text):\n"
        "        return Scan('', [PartialCall(n, '{}', True) for n in text.split()])\n")
    cls = resolve_tool_parser(True, "every_line_a_call", str(plugin))
    result = cls(TOOLS).extract_tool_calls("get_time\nsearch")
    assert [c.name for c in result.tool_calls] == ["get_time", "search"]
    with pytest.raises(ValueError, match="--tool-parser-plugin"):
        resolve_tool_parser(True, "hermes", str(tmp_path / "missing.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ValueError, match="boom"):
        resolve_tool_parser(True, "hermes", str(broken))


# ---------------------------------------------------------------------- fuzz
_FRAGMENTS = ["<tool_call>", "</tool_call>", "<|python_tag|>", "[TOOL_CALLS]", "<|python_start|>",
              "<|python_end|>", '{"name": "get_time", "arguments": {"timezone": "UTC"}}',
              '{"name": "search", "parameters": {"query": "a\\"b"}}', "get_time(timezone='X')",
              '{"name": ', '"get_time"', '"arguments": ', "{", "}", "[", "]", "(", ")", ",", ";",
              '"', "'", "\\", " ", "\n", "text", "é", "=", "1", "null", "name"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["hermes", "llama3_json", "mistral", "pythonic"]),
       st.lists(st.sampled_from(_FRAGMENTS), max_size=12), st.randoms(use_true_random=False))
def test_any_text_parses_without_error(name, fragments, rng):
    """Whatever the model writes: no exception, unary calls carry JSON-object arguments,
    and a stream agrees with unary whenever unary found calls."""
    text = "".join(fragments)
    unary = _parser(name).extract_tool_calls(text)
    for call in unary.tool_calls:
        assert isinstance(json.loads(call.arguments), dict)
    if not unary.tool_calls:
        assert unary.content == text
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, 6))) if len(text) > 1 else []
    content, calls, _ = _stream(_parser(name), text, cuts)
    if unary.tool_calls:
        assert content == unary.content
        assert [(n, a) for _, n, a in calls] == [(c.name, c.arguments) for c in unary.tool_calls]
    elif not calls:
        assert content == (unary.content or None)
