"""The server's lifecycle around its engine (entrypoints/lifecycle.py, server_runner.py):
engine death ends in-flight requests with an error, answers /health with 503 and exits the
process non-zero; SIGTERM drains (new requests 503, in-flight ones finish, exit 0).

Fake-engine servers run `cli.main(argv, engine=FakeEngine())` in a child process: the real
start-up and signal path, no model. The drain of a real stream uses `llmcore-server` on the
default model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from server_helpers import HOST, MAX_MODEL_LEN, SMALL_KV, _pythonpath, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
EXIT_TIMEOUT = 60

# SIGUSR1 kills the fake engine (from a thread: kill() takes a lock the interrupted main
# thread may hold).
SCRIPT = """
import signal, sys, threading
from fake_engine import FakeEngine
from llmcore.entrypoints.cli import main
engine = FakeEngine(step_delay=float(sys.argv[1]))
signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(target=engine.kill).start())
main(sys.argv[2:], engine=engine)
"""


class FakeServerProcess:
    def __init__(self, *flags: str, step_delay: float = 0.01):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + _pythonpath())
        env.pop("LLMCORE_API_KEY", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(step_delay), "--host", HOST, "--port",
             str(self.port), "--uvicorn-log-level", "warning", *flags],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait_ready(self) -> "FakeServerProcess":
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError("the server did not start:\n" + self.output())

    def wait_exit(self) -> int:
        return self.proc.wait(timeout=EXIT_TIMEOUT)

    def output(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stdout.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture
def fake_process():
    started: list[FakeServerProcess] = []

    def start(*flags: str, **kw) -> FakeServerProcess:
        srv = FakeServerProcess(*flags, **kw)
        started.append(srv)
        return srv.wait_ready()

    yield start
    for srv in started:
        srv.close()


def _open_stream(url: str, **body):
    """(client, response, line iterator) of a streamed completion, after its first chunk."""
    client = httpx.Client(timeout=120)
    r = client.send(client.build_request("POST", url + "/v1/completions",
                                         json={"prompt": "Hello", "stream": True, **body}),
                    stream=True)
    assert r.status_code == 200, r.read()
    lines = (ln for ln in r.iter_lines() if ln)
    first = next(lines)
    assert first.startswith("data: {") and '"choices"' in first, first
    return client, r, lines


def _assert_error_event_then_done(rest: list[str], status: int = 503) -> dict:
    assert rest[-1] == "data: [DONE]", rest[-3:]
    err = json.loads(rest[-2][len("data: "):])
    assert set(err["error"]) == {"message", "type", "param", "code"}, err
    assert err["error"]["type"] == ("service_unavailable" if status == 503 else
                                    "internal_server_error")
    return err["error"]


def _wait_for(cond, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# ------------------------------------------------------------------ engine death, in process
def _server_fake_engine_cls():
    """tests/server/fake_engine.py's FakeEngine, by path: grpc/ has a fake_engine module of
    its own, which `import fake_engine` may find when both directories run in one session."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("server_fake_engine",
                                                  os.path.join(HERE, "fake_engine.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FakeEngine


def test_engine_death_ends_in_flight_requests_at_once(fake_server):
    engine = _server_fake_engine_cls()(step_delay=0.01)
    with fake_server(engine) as srv:
        client, stream, lines = _open_stream(srv.url, max_tokens=400)
        unary: dict = {}
        t = threading.Thread(target=lambda: unary.update(r=httpx.post(
            srv.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 400}, timeout=120)))
        t.start()
        _wait_for(lambda: len(engine.running) == 2, "both requests to run")
        # From now on the fake engine would not produce (nor notice its death) for an hour:
        # only the server's own reaction to wait_for_death() can end the requests.
        engine.step_delay = 3600
        engine.kill()
        err = _assert_error_event_then_done(list(lines))
        assert "dead" in err["message"]
        t.join(60)
        r = unary["r"]
        assert r.status_code == 503 and "dead" in r.json()["error"]["message"], r.text
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        stream.close()
        client.close()
        h = httpx.get(srv.url + "/health")
        assert h.status_code == 503 and h.json()["error"]["type"] == "service_unavailable"
        _wait_for(lambda: not engine.running, "the requests to be aborted")


# ------------------------------------------------------------------ engine death, process exit
def test_engine_death_exits_the_process_nonzero(fake_process):
    srv = fake_process(step_delay=0.1)
    client, stream, lines = _open_stream(srv.url, max_tokens=500)
    srv.proc.send_signal(signal.SIGUSR1)
    _assert_error_event_then_done(list(lines))
    stream.close()
    client.close()
    try:  # answered 503 until the process is gone
        assert httpx.get(srv.url + "/health", timeout=10).status_code == 503
    except httpx.TransportError:
        pass
    assert srv.wait_exit() == 1
    out = srv.output()
    assert "engine died" in out and "Traceback" not in out, out


# ------------------------------------------------------------------ SIGTERM
def test_drain_timeout_ends_open_stream_with_error_event(fake_process):
    srv = fake_process("--shutdown-timeout", "0.5", step_delay=0.2)
    client, stream, lines = _open_stream(srv.url, max_tokens=500)  # ~100 s of tokens
    srv.proc.send_signal(signal.SIGTERM)
    err = _assert_error_event_then_done(list(lines))
    assert "shutdown-timeout" in err["message"]
    stream.close()
    client.close()
    assert srv.wait_exit() == 0, srv.output()


def test_second_sigterm_exits_at_once(fake_process):
    srv = fake_process("--shutdown-timeout", "600", step_delay=0.2)
    client, stream, lines = _open_stream(srv.url, max_tokens=500)
    srv.proc.send_signal(signal.SIGTERM)
    _wait_for(lambda: httpx.get(srv.url + "/health").status_code == 503, "the drain to begin")
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.wait_exit() == 128 + signal.SIGTERM
    stream.close()
    client.close()


def test_sigterm_drains_a_real_stream(start_server):
    # --shutdown-timeout far beyond the stream's length, even on a slow machine.
    srv = start_server("--max-model-len", str(MAX_MODEL_LEN), *SMALL_KV,
                       "--shutdown-timeout", "600")
    client, stream, lines = _open_stream(srv.url, max_tokens=200, ignore_eos=True,
                                         temperature=0)
    srv.proc.send_signal(signal.SIGTERM)
    _wait_for(lambda: httpx.get(srv.url + "/health").status_code == 503, "the drain to begin")
    r = httpx.post(srv.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
    assert r.status_code == 503, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert "shutting down" in r.json()["error"]["message"]
    rest = list(lines)
    assert rest[-1] == "data: [DONE]" and not any('"error"' in ln for ln in rest), rest[-3:]
    last = json.loads(rest[-2][len("data: "):])
    assert last["choices"][0]["finish_reason"] == "length"
    stream.close()
    client.close()
    assert srv.proc.wait(timeout=EXIT_TIMEOUT) == 0, srv.log()
