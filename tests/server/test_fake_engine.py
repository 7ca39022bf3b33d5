"""Engine states a real engine cannot be put in on demand, with a fake EngineClient
behind the same app (uvicorn in a thread, real HTTP): a dead engine loop."""

from __future__ import annotations

import threading
import time

import httpx

from fake_engine import FakeEngine


def test_health_503_when_engine_dead(fake_server):
    engine = FakeEngine()
    with fake_server(engine) as srv:
        assert httpx.get(srv.url + "/health").status_code == 200
        engine.kill()
        r = httpx.get(srv.url + "/health")
        assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable"
        r = httpx.post(srv.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2})
        assert r.status_code == 503 and set(r.json()["error"]) == {"message", "type", "param",
                                                                    "code"}


def test_error_mid_stream_ends_with_error_event_and_done(fake_server):
    engine = FakeEngine(step_delay=0.02)
    with fake_server(engine) as srv:
        threading.Timer(0.2, engine.kill).start()
        with httpx.stream("POST", srv.url + "/v1/completions", timeout=30,
                          json={"model": "fake", "prompt": "hi", "max_tokens": 200,
                                "stream": True}) as r:
            assert r.status_code == 200
            events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert '"error"' in events[-2] and '"message"' in events[-2]


def test_stream_disconnect_aborts(fake_server):
    engine = FakeEngine(step_delay=0.02)
    with fake_server(engine) as srv:
        with httpx.stream("POST", srv.url + "/v1/chat/completions", timeout=30,
                          json={"model": "fake", "messages": [{"role": "user", "content": "x"}],
                                "max_tokens": 400, "n": 3, "stream": True}) as r:
            for i, _ in enumerate(r.iter_lines()):
                if i > 6:
                    break
        deadline = time.time() + 3
        while engine.running and time.time() < deadline:
            time.sleep(0.02)
        assert not engine.running and engine.aborted


def test_request_template_allowed_when_trusted(fake_server):
    from llmcore.config import FrontendArgs

    engine = FakeEngine()
    fa = FrontendArgs(trust_request_chat_template=True)
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}
    with fake_server(engine, fa) as srv:
        assert httpx.post(srv.url + "/v1/chat/completions", json=body).status_code == 200
        # the sandbox refuses unsafe templates with a 400, not a crash
        body["chat_template"] = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
        r = httpx.post(srv.url + "/v1/chat/completions", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    with fake_server(engine) as srv:
        body["chat_template"] = "{{ 1 }}"
        r = httpx.post(srv.url + "/v1/chat/completions", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == "chat_template"
