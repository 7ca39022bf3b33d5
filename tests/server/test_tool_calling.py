"""Tool calling through the HTTP server with the official `openai` client.

- auto tool choice (`--enable-auto-tool-choice --tool-call-parser hermes`): a fake engine
  that writes a recorded hermes-format output, unary and streamed;
- named and "required" tool choice on the real SmolLM2 model: guided decoding forces a
  call whose arguments validate against the tool's schema (`jsonschema`);
- tools reaching the chat template, tool-role messages, and the 400s of bad tool input.
"""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator

import httpx
import jsonschema
import openai
import pytest

from fake_engine import FakeEngine
from llmcore.outputs import CompletionOutput, RequestOutput
from server_helpers import API_KEY

# plugins that other tests loaded stay registered in the process: other names may appear
KNOWN_PARSERS = r"known parsers: (.+, )?hermes, llama3_json, mistral, (.+, )?pythonic"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object",
                       "properties": {"timezone": {"type": "string", "maxLength": 16}},
                       "required": ["timezone"], "additionalProperties": False},
    },
}
TOOLS = [WEATHER, TIME]
ASK = [{"role": "user", "content": "What's the weather like in Paris and the time in Tokyo?"}]

HERMES_OUTPUT = (
    "Let me check both.\n<tool_call>\n{\"name\": \"get_current_weather\", \"arguments\": "
    "{\"city\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call>\n<tool_call>\n{\"name\": "
    "\"get_time\", \"arguments\": {\"timezone\": \"Asia/Tokyo\"}}\n</tool_call>")
HERMES_CALLS = [("get_current_weather", {"city": "Paris", "unit": "celsius"}),
                ("get_time", {"timezone": "Asia/Tokyo"})]


class ScriptedEngine(FakeEngine):
    """Writes `script` (a few characters per step, finish_reason "stop"), whatever the
    prompt; the prompts and sampling params it was given are kept."""

    def __init__(self, script: str):
        super().__init__(max_model_len=4096, step_delay=0.0)
        self.script = script
        self.prompts: list[list[int]] = []

    def generate(self, prompt, sampling_params, request_id, priority=0):
        self.prompts.append(list(prompt["prompt_token_ids"]))
        return super().generate(prompt, sampling_params, request_id, priority)

    async def _run(self, request_id, text, ids, sp) -> AsyncIterator[RequestOutput]:
        out, step = "", 3
        for end in range(step, len(self.script) + step, step):
            await asyncio.sleep(0)
            out = self.script[:end]
            done = end >= len(self.script)
            token_ids = self.tokenizer.encode(out)
            yield RequestOutput(request_id=request_id, prompt=text, prompt_token_ids=ids,
                                prompt_logprobs=None,
                                outputs=[CompletionOutput(i, out, token_ids, 0.0, None,
                                                          "stop" if done else None)
                                         for i in range(sp.n)],
                                finished=done)


def _auto_args():
    from llmcore.config import FrontendArgs

    return FrontendArgs(enable_auto_tool_choice=True, tool_call_parser="hermes",
                        trust_request_chat_template=True)


def _client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)


def _calls(tool_calls) -> list:
    return [(c.function.name, json.loads(c.function.arguments)) for c in tool_calls]


def _collect_stream(chunks) -> tuple:
    """(content, {index: [id, name, arguments]}, finish_reason) of a streamed choice 0,
    checking OpenAI's delta format on the way."""
    content, calls, finish = "", {}, None
    for chunk in chunks:
        for choice in chunk.choices:
            delta = choice.delta
            content += delta.content or ""
            for piece in delta.tool_calls or []:
                if piece.index not in calls:  # first piece: index, id, type, name
                    assert piece.id and piece.type == "function" and piece.function.name
                    calls[piece.index] = [piece.id, piece.function.name,
                                          piece.function.arguments or ""]
                else:  # later pieces only append arguments
                    assert piece.id is None and piece.function.name is None
                    calls[piece.index][2] += piece.function.arguments
            if choice.finish_reason is not None:
                finish = choice.finish_reason
    return content, calls, finish


# ---------------------------------------------------------------------- auto (fake engine)
def test_auto_tool_choice_unary(fake_server):
    engine = ScriptedEngine(HERMES_OUTPUT)
    with fake_server(engine, _auto_args()) as srv:
        r = _client(srv.url).chat.completions.create(model="fake", messages=ASK, tools=TOOLS)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check both."
    assert _calls(choice.message.tool_calls) == HERMES_CALLS
    assert all(c.type == "function" and c.id.startswith("chatcmpl-tool-")
               for c in choice.message.tool_calls)
    assert isinstance(choice.message.tool_calls[0].function.arguments, str)
    params = engine.calls[-1][1]
    assert params.guided_decoding is None  # auto: the model is free
    assert params.skip_special_tokens is False  # hermes markup must reach the parser


def test_auto_tool_choice_streaming(fake_server):
    engine = ScriptedEngine(HERMES_OUTPUT)
    with fake_server(engine, _auto_args()) as srv:
        client = _client(srv.url)
        unary = client.chat.completions.create(model="fake", messages=ASK, tools=TOOLS,
                                               tool_choice="auto")
        chunks = list(client.chat.completions.create(model="fake", messages=ASK, tools=TOOLS,
                                                     tool_choice="auto", stream=True))
    content, calls, finish = _collect_stream(chunks)
    assert finish == "tool_calls" and chunks[-1].choices[0].finish_reason == "tool_calls"
    assert content == unary.choices[0].message.content
    assert [(n, a) for _, n, a in calls.values()] == [
        (c.function.name, c.function.arguments) for c in unary.choices[0].message.tool_calls]
    # arguments arrive in several pieces, not in one at the end
    assert sum(1 for ch in chunks for c in ch.choices for _ in c.delta.tool_calls or []) > 4


def test_tool_choice_none_and_plain_text(fake_server):
    engine = ScriptedEngine(HERMES_OUTPUT)
    with fake_server(engine, _auto_args()) as srv:
        client = _client(srv.url)
        r = client.chat.completions.create(model="fake", messages=ASK, tools=TOOLS,
                                           tool_choice="none")
        assert r.choices[0].message.content == HERMES_OUTPUT  # not parsed
        assert not r.choices[0].message.tool_calls and r.choices[0].finish_reason == "stop"
        engine.script = "It is sunny in Paris."
        r = client.chat.completions.create(model="fake", messages=ASK, tools=TOOLS)
        assert r.choices[0].message.content == "It is sunny in Paris."
        assert not r.choices[0].message.tool_calls and r.choices[0].finish_reason == "stop"
        content, calls, finish = _collect_stream(client.chat.completions.create(
            model="fake", messages=ASK, tools=TOOLS, stream=True))
        assert (content, calls, finish) == ("It is sunny in Paris.", {}, "stop")


TOOLS_TEMPLATE = (
    "{% if tools %}TOOLS:{% for t in tools %}[{{ t.function.name }}:{{ t.function.parameters "
    "| tojson }}]{% endfor %}\n{% endif %}"
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
    "{% for c in m.tool_calls or [] %}(call {{ c.id }} {{ c.function.name }} "
    "{{ c.function.arguments.city }}){% endfor %}"
    "{% if m.tool_call_id %}(answers {{ m.tool_call_id }}){% endif %}\n{% endfor %}")


def test_chat_template_receives_tools_and_tool_messages(fake_server):
    engine = ScriptedEngine("It is 18 degrees.")
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_current_weather",
                          "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees"}]
    with fake_server(engine, _auto_args()) as srv:
        r = _client(srv.url).chat.completions.create(
            model="fake", messages=history, tools=TOOLS, tool_choice="none",
            extra_body={"chat_template": TOOLS_TEMPLATE})
    assert r.choices[0].message.content == "It is 18 degrees."
    prompt = engine.tokenizer.decode(engine.prompts[-1])
    assert prompt.startswith("TOOLS:[get_current_weather:{\"type\": \"object\"")
    assert "[get_time:" in prompt
    # arguments reach the template as an object (transformers' convention)
    assert "<assistant>(call call_1 get_current_weather Paris)" in prompt
    assert "<tool>18 degrees(answers call_1)" in prompt


def test_llm_chat_passes_tools_to_the_template(llm):
    from llmcore import SamplingParams

    out = llm.chat(ASK, SamplingParams(max_tokens=1), use_tqdm=False, tools=TOOLS,
                   chat_template=TOOLS_TEMPLATE)[0]
    prompt = llm.get_tokenizer().decode(out.prompt_token_ids)
    assert "TOOLS:[get_current_weather:" in prompt and "[get_time:" in prompt


BAD_TOOLS = [
    ("missing function name", {"tools": [{"type": "function", "function": {"parameters": {}}}],
                               "tool_choice": "none"}, "tools"),
    ("parameters not an object", {"tools": [{"type": "function", "function": {
        "name": "f", "parameters": ["a"]}}], "tool_choice": "none"}, "tools"),
    ("type not function", {"tools": [{"type": "retrieval", "function": {"name": "f"}}],
                           "tool_choice": "none"}, "tools"),
    ("named tool not in tools", {"tools": TOOLS, "tool_choice": {
        "type": "function", "function": {"name": "send_email"}}}, "tool_choice"),
    ("named without a name", {"tools": TOOLS, "tool_choice": {"type": "function",
                                                               "function": {}}}, "tool_choice"),
    ("unknown tool_choice", {"tools": TOOLS, "tool_choice": "always"}, "tool_choice"),
    ("tool_choice without tools", {"tool_choice": "required"}, "tool_choice"),
    ("forced call with guided_json", {"tools": TOOLS, "tool_choice": "required",
                                      "guided_json": {"type": "object"}}, "guided_json"),
    ("parameters not a valid schema", {"tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": 5}}}], "tool_choice": "required"}, "tools"),
    ("assistant tool_calls without a name", {"tool_choice": "none", "messages": [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "x", "function": {}}]}]},
     "messages"),
    ("deprecated functions", {"functions": [{"name": "f"}]}, "functions"),
]


def test_bad_tool_requests(fake_server):
    engine = ScriptedEngine("x")
    with fake_server(engine, _auto_args()) as srv:
        for label, patch, param in BAD_TOOLS:
            r = httpx.post(srv.url + "/v1/chat/completions", timeout=30,
                           json={"model": "fake", "messages": ASK, **patch})
            assert r.status_code == 400, (label, r.text)
            err = r.json()["error"]
            assert err["param"] == param and err["message"], (label, err)
        assert httpx.post(srv.url + "/v1/chat/completions", timeout=30, json={
            "model": "fake", "messages": ASK}).status_code == 200  # still serving
    assert len(engine.calls) == 1 and not engine.running


def test_auto_without_flags_is_400(fake_server):
    engine = ScriptedEngine("x")
    with fake_server(engine) as srv:
        for choice in ({"tool_choice": "auto"}, {}):  # tools without tool_choice mean "auto"
            r = httpx.post(srv.url + "/v1/chat/completions", timeout=30,
                           json={"model": "fake", "messages": ASK, "tools": TOOLS, **choice})
            assert r.status_code == 400
            err = r.json()["error"]
            assert err["param"] == "tool_choice"
            assert "--enable-auto-tool-choice" in err["message"]
            assert "--tool-call-parser" in err["message"]
        r = httpx.post(srv.url + "/v1/chat/completions", timeout=30,
                       json={"model": "fake", "messages": ASK, "tools": TOOLS,
                             "tool_choice": "none"})
        assert r.status_code == 200


def test_startup_flag_checks(tmp_path):
    from llmcore.entrypoints.cli import StartupError, prepare

    with pytest.raises(StartupError, match=KNOWN_PARSERS) as e:
        prepare(["--enable-auto-tool-choice", "--tool-call-parser", "no-such-parser"])
    assert e.value.code == 2
    with pytest.raises(StartupError, match="--enable-auto-tool-choice needs --tool-call-parser"):
        prepare(["--enable-auto-tool-choice"])
    with pytest.raises(StartupError, match="--tool-parser-plugin"):
        prepare(["--tool-parser-plugin", str(tmp_path / "missing.py"),
                 "--tool-call-parser", "hermes"])
    plugin = tmp_path / "plugin.py"
    plugin.write_text("from llmcore.entrypoints.openai.tool_parsers import register_tool_parser\n"
                      "from llmcore.entrypoints.openai.tool_parsers.hermes import "
                      "HermesToolParser\n"
                      "register_tool_parser('my_hermes')(type('Mine', (HermesToolParser,), {}))\n")
    _, fa, _, _ = prepare(["--enable-auto-tool-choice", "--tool-call-parser", "my_hermes",
                           "--tool-parser-plugin", str(plugin)])
    assert fa.tool_call_parser == "my_hermes" and fa.enable_auto_tool_choice


# ---------------------------------------------------------------------- forced (fake engine)
NAMED = {"type": "function", "function": {"name": "get_current_weather"}}
REQUIRED_OUTPUT = ('[{"name": "get_time", "parameters": {"timezone": "UTC"}}, '
                   '{"name": "get_current_weather", "parameters": {"city": "Oslo", '
                   '"unit": "celsius"}}]')


@pytest.mark.parametrize("tool_choice,parallel,script,expected", [
    (NAMED, None, '{"city": "Paris", "unit": "celsius"}',
     [("get_current_weather", {"city": "Paris", "unit": "celsius"})]),
    ("required", None, REQUIRED_OUTPUT,
     [("get_time", {"timezone": "UTC"}), ("get_current_weather", {"city": "Oslo",
                                                                  "unit": "celsius"})]),
    ("required", False, REQUIRED_OUTPUT[:56] + "]", [("get_time", {"timezone": "UTC"})]),
], ids=["named", "required", "required-one"])
def test_forced_tool_choice_shapes(fake_server, tool_choice, parallel, script, expected):
    """What guided decoding is asked for, and how its output comes back (unary, stream)."""
    from llmcore.entrypoints.openai.tool_calls import required_schema

    engine = ScriptedEngine(script)
    extra = {} if parallel is None else {"parallel_tool_calls": parallel}
    with fake_server(engine) as srv:  # no auto-tool flags needed
        client = _client(srv.url)
        r = client.chat.completions.create(model="fake", messages=ASK, tools=TOOLS,
                                           tool_choice=tool_choice, **extra)
        chunks = list(client.chat.completions.create(model="fake", messages=ASK, tools=TOOLS,
                                                     tool_choice=tool_choice, stream=True,
                                                     **extra))
    guided = engine.calls[0][1].guided_decoding
    if tool_choice == "required":
        assert guided.json == required_schema(TOOLS, parallel is not False)
        assert guided.json.get("maxItems") == (1 if parallel is False else None)
    else:
        assert guided.json == WEATHER["function"]["parameters"]
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert _calls(choice.message.tool_calls) == expected
    content, calls, finish = _collect_stream(chunks)
    assert finish == "tool_calls" and content == ""
    assert [(n, json.loads(a)) for _, n, a in calls.values()] == expected


def test_required_schema_accepts_only_calls():
    from llmcore.entrypoints.openai.tool_calls import required_schema

    schema = required_schema(TOOLS, True)
    jsonschema.validate(json.loads(REQUIRED_OUTPUT), schema)
    for bad in ([], [{"name": "get_time", "parameters": {}}],
                [{"name": "nope", "parameters": {"timezone": "UTC"}}],
                [{"name": "get_time", "parameters": {"timezone": "UTC"}, "extra": 1}]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    with pytest.raises(jsonschema.ValidationError):  # parallel_tool_calls=false: one call
        jsonschema.validate(json.loads(REQUIRED_OUTPUT), required_schema(TOOLS, False))
    # a tool's $defs move to the root, where its "#/$defs/..." references point
    with_defs = {"type": "function", "function": {"name": "move", "parameters": {
        "type": "object", "properties": {"to": {"$ref": "#/$defs/point"}}, "required": ["to"],
        "$defs": {"point": {"type": "object", "required": ["x"],
                            "properties": {"x": {"type": "integer"}}}}}}}
    schema = required_schema([*TOOLS, with_defs], True)
    jsonschema.validate([{"name": "move", "parameters": {"to": {"x": 1}}}], schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "move", "parameters": {"to": {"x": "far"}}}], schema)


# ---------------------------------------------------------------------- forced (real model)
@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return _client(server.url, API_KEY)


def test_named_tool_choice_real_model(client):
    named = {"type": "function", "function": {"name": "get_current_weather"}}
    r = client.chat.completions.create(model="smol", messages=ASK, tools=TOOLS,
                                       tool_choice=named, max_tokens=60, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_current_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    # streamed: the same call (greedy), arguments in pieces
    chunks = list(client.chat.completions.create(model="smol", messages=ASK, tools=TOOLS,
                                                 tool_choice=named, max_tokens=60,
                                                 temperature=0, stream=True))
    content, calls, finish = _collect_stream(chunks)
    assert finish == "tool_calls" and not content
    assert [(n, a) for _, n, a in calls.values()] == [(call.function.name,
                                                      call.function.arguments)]


def test_required_tool_choice_real_model(client):
    r = client.chat.completions.create(model="smol", messages=ASK, tools=TOOLS,
                                       tool_choice="required", parallel_tool_calls=False,
                                       max_tokens=80, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    assert call.id.startswith("chatcmpl-tool-") and call.type == "function"
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
