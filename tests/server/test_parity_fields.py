"""vLLM request fields on the HTTP front end, against the fake engine (real HTTP):
max_completion_tokens, priority, return_tokens_as_token_ids, continuous_usage_stats,
user logging, --max-log-len on token-id prompts, generation-config defaults."""

from __future__ import annotations

import json
import logging

import httpx

from fake_engine import FakeEngine
from llmcore.config import EngineArgs

MSG = [{"role": "user", "content": "hi"}]


def _chat(srv, **body):
    return httpx.post(srv.url + "/v1/chat/completions", json={"messages": MSG, **body}, timeout=30)


def test_max_completion_tokens_smaller_wins(fake_server):
    engine = FakeEngine()
    with fake_server(engine) as srv:
        r = _chat(srv, max_completion_tokens=3)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 3
        assert engine.calls[-1][1].max_tokens == 3
        _chat(srv, max_completion_tokens=4, max_tokens=2)
        assert engine.calls[-1][1].max_tokens == 2
        _chat(srv, max_completion_tokens=2, max_tokens=5)
        assert engine.calls[-1][1].max_tokens == 2
        r = _chat(srv, max_completion_tokens=0)
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_completion_tokens"
        r = _chat(srv, max_completion_tokens=10**6)
        assert r.status_code == 400 and "maximum context length" in r.json()["error"]["message"]


def test_priority_passed_to_engine_and_range_checked(fake_server):
    engine = FakeEngine()
    with fake_server(engine) as srv:
        assert _chat(srv, max_tokens=2, priority=-3).status_code == 200
        assert engine.calls[-1][2] == -3
        r = httpx.post(srv.url + "/v1/completions",
                       json={"prompt": "ab", "max_tokens": 2, "priority": 7})
        assert r.status_code == 200 and engine.calls[-1][2] == 7
        _chat(srv, max_tokens=2)
        assert engine.calls[-1][2] == 0
        r = _chat(srv, max_tokens=2, priority=2**31)
        assert r.status_code == 400 and r.json()["error"]["param"] == "priority"


def test_return_tokens_as_token_ids(fake_server):
    engine = FakeEngine()
    with fake_server(engine) as srv:
        r = _chat(srv, max_tokens=3, logprobs=True, top_logprobs=2,
                  return_tokens_as_token_ids=True)
        content = r.json()["choices"][0]["logprobs"]["content"]
        assert len(content) == 3
        for entry in content:
            assert entry["token"].startswith("token_id:")
            assert entry["bytes"] == list(entry["token"].encode())
            assert all(t["token"].startswith("token_id:") for t in entry["top_logprobs"])
        r = httpx.post(srv.url + "/v1/completions",
                       json={"prompt": "ab", "max_tokens": 3, "logprobs": 1,
                             "return_tokens_as_token_ids": True})
        lp = r.json()["choices"][0]["logprobs"]
        ids = [int(t.split(":")[1]) for t in lp["tokens"]]
        assert all(0 <= i < 256 for i in ids) and len(ids) == 3
        assert lp["text_offset"] == [0, len(lp["tokens"][0]),
                                     len(lp["tokens"][0]) + len(lp["tokens"][1])]
        r = _chat(srv, max_tokens=2, logprobs=True)  # default: token text
        assert not r.json()["choices"][0]["logprobs"]["content"][0]["token"].startswith("token_id")


def _events(srv, path, body):
    with httpx.stream("POST", srv.url + path, json=body, timeout=30) as r:
        assert r.status_code == 200
        lines = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(ln) for ln in lines[:-1]]


def test_continuous_usage_stats(fake_server):
    engine = FakeEngine()
    with fake_server(engine) as srv:
        for path, body in (("/v1/chat/completions", {"messages": MSG}),
                           ("/v1/completions", {"prompt": "abc"})):
            chunks = _events(srv, path, {**body, "max_tokens": 4, "stream": True,
                                         "stream_options": {"include_usage": True,
                                                            "continuous_usage_stats": True}})
            usages = [c["usage"] for c in chunks]
            assert all(u is not None for u in usages), usages
            done = [u["completion_tokens"] for u in usages]
            assert done == sorted(done) and done[-1] == 4
            assert all(u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
                       for u in usages)
            # without it only the last chunk carries usage
            chunks = _events(srv, path, {**body, "max_tokens": 4, "stream": True,
                                         "stream_options": {"include_usage": True}})
            assert all(c["usage"] is None for c in chunks[:-1]) and chunks[-1]["usage"]


def test_user_logged_and_max_log_len_counts_token_ids(fake_server, caplog):
    engine = FakeEngine()
    ea = EngineArgs(disable_log_requests=False, max_log_len=3)
    with caplog.at_level(logging.INFO, logger="llmcore.entrypoints.openai"):
        with fake_server(engine, engine_args=ea) as srv:
            r = httpx.post(srv.url + "/v1/completions",
                           json={"prompt": [10, 11, 12, 13, 14, 15], "max_tokens": 1,
                                 "user": "alice"})
            assert r.status_code == 200
            r = httpx.post(srv.url + "/v1/completions",
                           json={"prompt": "abcdefgh", "max_tokens": 1})
    lines = [rec.getMessage() for rec in caplog.records if "request cmpl-" in rec.getMessage()]
    assert len(lines) == 2, lines
    assert "prompt_token_ids=[10, 11, 12]" in lines[0] and "user='alice'" in lines[0]
    assert "13" not in lines[0].split("prompt_token_ids=")[1].split(" params")[0]
    assert "prompt='abc'" in lines[1] and "abcd" not in lines[1]


def test_generation_config_defaults_fill_unset_fields(fake_server):
    engine = FakeEngine()
    engine.model_info.sampling_defaults = {"temperature": 0.25, "top_p": 0.5, "top_k": 7,
                                           "repetition_penalty": 1.1, "max_tokens": 3}
    with fake_server(engine) as srv:
        assert _chat(srv).status_code == 200
        sp = engine.calls[-1][1]
        assert (sp.temperature, sp.top_p, sp.top_k, sp.repetition_penalty, sp.max_tokens) == \
            (0.25, 0.5, 7, 1.1, 3)
        _chat(srv, temperature=0.9, top_k=None, max_tokens=5)   # set fields win; null = unset
        sp = engine.calls[-1][1]
        assert (sp.temperature, sp.top_k, sp.top_p, sp.max_tokens) == (0.9, 7, 0.5, 5)
        httpx.post(srv.url + "/v1/completions", json={"prompt": "ab"})
        sp = engine.calls[-1][1]
        assert (sp.temperature, sp.max_tokens) == (0.25, 3)
    engine = FakeEngine(max_model_len=8)
    engine.model_info.sampling_defaults = {"max_tokens": 100}
    with fake_server(engine) as srv:  # the default is capped at the context left, no 400
        r = httpx.post(srv.url + "/v1/completions", json={"prompt": "abc"})
        assert r.status_code == 200 and engine.calls[-1][1].max_tokens == 5
