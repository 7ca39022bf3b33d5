"""gRPC request parity with the HTTP front end, on the fake engine (real gRPC over
loopback): priority, generation-config defaults, request logs cut by --max-log-len."""

from __future__ import annotations

import logging

import grpc
import pytest

from grpc_fake_engine import FakeEngine
from grpc_testlib import ServerThread


@pytest.fixture
def fake(request):
    engine = FakeEngine()
    servers = []

    def start(**kw):
        srv = ServerThread(engine, **kw)
        servers.append(srv)
        return srv

    yield engine, start
    for srv in servers:
        srv.stop()


def _stub(srv, stubs):
    ch = grpc.insecure_channel(srv.target)
    return ch, stubs[1].GenerationStub(ch)


def test_priority_reaches_the_engine(fake, stubs):
    pb2, _ = stubs
    engine, start = fake
    ch, client = _stub(start(), stubs)
    with ch:
        sp = pb2.SamplingParams(max_tokens=2)
        list(client.Generate(pb2.GenerateRequest(text="ab", sampling_params=sp, priority=-5)))
        assert engine.calls[-1][2] == -5
        client.GenerateUnary(pb2.GenerateRequest(text="ab", sampling_params=sp, priority=4))
        assert engine.calls[-1][2] == 4
        list(client.Chat(pb2.ChatRequest(messages=[pb2.ChatMessage(role="user", content="x")],
                                         sampling_params=sp, priority=9)))
        assert engine.calls[-1][2] == 9
        list(client.Generate(pb2.GenerateRequest(text="ab", sampling_params=sp)))
        assert engine.calls[-1][2] == 0


def test_generation_config_defaults_fill_unset_fields(fake, stubs):
    pb2, _ = stubs
    engine, start = fake
    engine.model_info.sampling_defaults = {"temperature": 0.25, "top_k": 5, "max_tokens": 3}
    ch, client = _stub(start(), stubs)
    with ch:
        client.GenerateUnary(pb2.GenerateRequest(text="abcdef"))
        sp = engine.calls[-1][1]
        assert (sp.temperature, sp.top_k, sp.max_tokens) == (0.25, 5, 3)
        client.GenerateUnary(pb2.GenerateRequest(
            text="abcdef", sampling_params=pb2.SamplingParams(temperature=0.5, max_tokens=2)))
        sp = engine.calls[-1][1]
        assert (sp.temperature, sp.top_k, sp.max_tokens) == (0.5, 5, 2)


def test_request_log_respects_max_log_len(fake, stubs, caplog):
    pb2, _ = stubs
    _, start = fake
    ch, client = _stub(start(serve_kw={"log_requests": True, "max_log_len": 3}), stubs)
    with ch, caplog.at_level(logging.INFO, logger="llmcore.grpc"):
        sp = pb2.SamplingParams(max_tokens=1)
        client.GenerateUnary(pb2.GenerateRequest(
            token_ids=pb2.TokenIds(ids=[10, 11, 12, 13, 14]), sampling_params=sp))
        client.GenerateUnary(pb2.GenerateRequest(text="abcdefg", sampling_params=sp))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("request grpc-")]
    assert len(lines) == 2, lines
    assert "prompt_token_ids=[10, 11, 12] " in lines[0]
    assert "prompt='abc' " in lines[1] and "abcd" not in lines[1]


def test_no_request_log_by_default(fake, stubs, caplog):
    pb2, _ = stubs
    _, start = fake
    ch, client = _stub(start(), stubs)
    with ch, caplog.at_level(logging.INFO, logger="llmcore.grpc"):
        client.GenerateUnary(pb2.GenerateRequest(text="ab",
                                                 sampling_params=pb2.SamplingParams(max_tokens=1)))
    assert not [r for r in caplog.records if r.getMessage().startswith("request grpc-")]
