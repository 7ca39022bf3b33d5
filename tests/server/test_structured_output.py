"""Structured output through the HTTP server (official `openai` client, real engine):
response_format, the guided_* extras and structured_outputs on chat and completions,
streaming, many concurrent constrained requests beside free ones, and bad specs -> 400."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import jsonschema
import openai
import pytest

from server_helpers import API_KEY

SCHEMA = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 16},
    "population": {"type": "integer", "minimum": 0, "maximum": 100000000}},
    "required": ["city", "population"]}
XGR = {"guided_decoding_backend": "xgrammar"}


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def test_chat_response_format_json_schema(client):
    r = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        max_tokens=40, temperature=0, extra_body=XGR,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}})
    choice = r.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    jsonschema.validate(json.loads(choice.message.content), SCHEMA)


def test_completion_fields(client):
    def complete(prompt, max_tokens, **extra):
        r = client.completions.create(model="smol", prompt=prompt, max_tokens=max_tokens,
                                      temperature=0, extra_body=extra)
        return r.choices[0]

    c = complete("The best color is", 8, guided_choice=["red", "green", "blue"])
    assert c.text in ("red", "green", "blue") and c.finish_reason == "stop"
    c = complete("Phone:", 16, guided_regex=r"\d{3}-\d{4}", **XGR)   # default backend: outlines
    assert re.fullmatch(r"\d{3}-\d{4}", c.text) and c.finish_reason == "stop"
    c = complete("Phone:", 16, guided_regex=r"\d{3}-\d{4}")
    assert re.fullmatch(r"\d{3}-\d{4}", c.text) and c.finish_reason == "stop"
    c = complete("Year:", 8, structured_outputs={"regex": r"(19|20)\d\d"}, **XGR)
    assert re.fullmatch(r"(19|20)\d\d", c.text)
    c = complete("Answer:", 8, guided_grammar='root ::= "yes" | "no"', **XGR)
    assert c.text in ("yes", "no") and c.finish_reason == "stop"
    c = complete("Paris:", 40, guided_json=json.dumps(SCHEMA), **XGR)
    jsonschema.validate(json.loads(c.text), SCHEMA)
    c = complete("JSON:", 40, response_format={"type": "json_object"}, **XGR)
    if c.finish_reason == "stop":
        assert isinstance(json.loads(c.text), dict)
    else:
        assert c.finish_reason == "length" and c.text.lstrip().startswith("{")


def test_streaming_matches(client):
    stream = client.completions.create(model="smol", prompt="Code:", max_tokens=16,
                                       temperature=0, stream=True,
                                       extra_body={"guided_regex": r"[A-Z]{3}-[0-9]{3}", **XGR})
    text, reasons = "", []
    for chunk in stream:
        for ch in chunk.choices:
            text += ch.text
            if ch.finish_reason:
                reasons.append(ch.finish_reason)
    assert re.fullmatch(r"[A-Z]{3}-[0-9]{3}", text) and reasons == ["stop"]


def test_concurrent_constrained_and_free(server):
    async def run():
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0,
                                    timeout=300)
        kinds = []
        calls = []
        for i in range(32):
            kind = ("choice", "regex", "json")[i % 3]
            extra = {"choice": {"guided_choice": ["alpha", "beta", "gamma"]},
                     "regex": {"guided_regex": r"[0-9]{1,3}(\.[0-9])?"},
                     "json": {"guided_json": SCHEMA}}[kind]
            kinds.append(kind)
            calls.append(client.completions.create(
                model="smol", prompt=f"Item {i}:", max_tokens=40, temperature=0.7, seed=i,
                extra_body={**extra, **XGR}))
        for i in range(8):
            kinds.append("free")
            calls.append(client.completions.create(model="smol", prompt=f"Story {i}:",
                                                   max_tokens=8, temperature=0.7, seed=i))
        try:
            return kinds, await asyncio.gather(*calls)
        finally:
            await client.close()

    kinds, results = asyncio.run(run())
    for kind, r in zip(kinds, results):
        c = r.choices[0]
        if kind == "choice":
            assert c.text in ("alpha", "beta", "gamma")
        elif kind == "regex":
            assert re.fullmatch(r"[0-9]{1,3}(\.[0-9])?", c.text), c.text
        elif kind == "json":
            assert c.finish_reason == "stop", c.text
            jsonschema.validate(json.loads(c.text), SCHEMA)
        else:
            assert r.usage.completion_tokens >= 1


BAD = [
    ({"guided_json": {"type": "no-such-type"}}, "guided_json"),
    ({"guided_json": "{not json"}, "guided_json"),
    ({"guided_regex": "(unclosed"}, "guided_regex"),
    ({"guided_grammar": "root ::= "}, "guided_grammar"),
    ({"guided_choice": []}, "guided_choice"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "required": "name"}}}}, "response_format"),
    ({"structured_outputs": {"regex": "(("}}, "structured_outputs"),
    ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice"),
    ({"guided_regex": "a", "guided_decoding_backend": "nope"}, "guided_decoding_backend"),
    # the server's default backend (outlines) compiles no grammars: the core says so
    ({"guided_grammar": 'root ::= "a"'}, "guided_grammar"),
    # too large to compile: refused by the size checks, at once
    ({"guided_regex": "(a{1000}){1000}"}, "guided_regex"),
    ({"guided_json": {"type": "string", "maxLength": 10 ** 7}}, "guided_json"),
]


@pytest.mark.parametrize("patch,param", BAD, ids=[p for _, p in BAD])
def test_bad_specs_400(server, patch, param):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    for path, body in (("/v1/completions", {"prompt": "x"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})):
        r = httpx.post(server.url + path, json={"model": "smol", "max_tokens": 4, **body, **patch},
                       headers=auth, timeout=60)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == param, err
        assert err["type"] == "invalid_request_error"
    # still serving
    r = httpx.post(server.url + "/v1/completions", headers=auth, timeout=60,
                   json={"model": "smol", "prompt": "x", "max_tokens": 2,
                         "guided_choice": ["ok"]})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "ok"
