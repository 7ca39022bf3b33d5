"""The gRPC front end's lifecycle around its engine: engine death ends in-flight RPCs with
UNAVAILABLE, reports NOT_SERVING and exits the process non-zero (gRPC-only and HTTP+gRPC);
SIGTERM drains (new RPCs UNAVAILABLE, the in-flight stream finishes, exit 0).

Fake-engine servers run `cli.main(argv, engine=FakeEngine())` in a child process (the real
start-up and signal path, no model); the drain of a real stream uses `llmcore-server` on
the default model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_testlib import ENGINE_KW, FAKE, ServerThread, child_env, free_port

HERE = Path(__file__).resolve().parent
EXIT_TIMEOUT = 60

# SIGUSR1 kills the fake engine (from a thread: kill() takes a lock the interrupted main
# thread may hold).
SCRIPT = """
import signal, sys, threading
from grpc_fake_engine import FakeEngine
from llmcore.entrypoints.cli import main
engine = FakeEngine(step_s=float(sys.argv[1]))
signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(target=engine.kill).start())
main(sys.argv[2:], engine=engine)
"""


def _req(pb2, text: str, **sp):
    return pb2.GenerateRequest(text=text, sampling_params=pb2.SamplingParams(**sp))


def _health(target: str) -> int:
    with grpc.insecure_channel(target) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                    timeout=10).status


def _wait_for(cond, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return
        except grpc.RpcError:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _spawn(args: list, step_s: float = 0.05) -> subprocess.Popen:
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(step_s), "--host", "127.0.0.1",
                             "--uvicorn-log-level", "warning", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def procs():
    started: list = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_engine_death_in_flight_unavailable(stubs):
    from grpc_fake_engine import FakeEngine

    pb2, pb2_grpc = stubs
    engine = FakeEngine(step_s=0.01)
    server = ServerThread(engine)
    try:
        with grpc.insecure_channel(server.target) as ch:
            stub = pb2_grpc.GenerationStub(ch)
            stream = stub.Generate(_req(pb2, "Hello", max_tokens=1000), timeout=60)
            next(stream)
            # The fake engine would now neither produce nor notice its death for an hour:
            # only the server's reaction to wait_for_death() can end the stream.
            engine.step_s = 3600
            engine.kill()
            with pytest.raises(grpc.RpcError) as e:
                for _ in stream:
                    pass
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "dead" in e.value.details()
            assert _health(server.target) == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as e:
                stub.GenerateUnary(_req(pb2, "Hi", max_tokens=2), timeout=30)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


@pytest.mark.parametrize("mode", ["grpc-only", "http+grpc"])
def test_engine_death_exits_nonzero(stubs, procs, mode):
    pb2, pb2_grpc = stubs
    port = free_port()
    flags = ["--grpc-port", str(port), "--port", str(free_port())]
    if mode == "grpc-only":
        flags.append("--grpc-only")
    proc = _spawn(flags)
    procs.append(proc)
    target = f"127.0.0.1:{port}"
    _wait_for(lambda: proc.poll() is None and
              _health(target) == health_pb2.HealthCheckResponse.SERVING, "the server")
    with grpc.insecure_channel(target) as ch:
        stream = pb2_grpc.GenerationStub(ch).Generate(_req(pb2, "Hello", max_tokens=1000),
                                                      timeout=60)
        next(stream)
        proc.send_signal(signal.SIGUSR1)
        with pytest.raises(grpc.RpcError) as e:
            for _ in stream:
                pass
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert proc.wait(timeout=EXIT_TIMEOUT) == 1
    out = proc.stdout.read()
    assert "engine died" in out and "Traceback" not in out, out


@pytest.mark.skipif(FAKE, reason="drains a real stream of the default model")
def test_sigterm_drains_a_real_stream(stubs, procs):
    pb2, pb2_grpc = stubs
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmcore.entrypoints.cli", "--host", "127.0.0.1",
         "--grpc-port", str(port), "--grpc-only", "--shutdown-timeout", "600",
         "--max-model-len", str(ENGINE_KW["max_model_len"]),
         "--cpu-kv-cache-space", str(ENGINE_KW["cpu_kv_cache_space"])],
        env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    procs.append(proc)
    target = f"127.0.0.1:{port}"
    _wait_for(lambda: proc.poll() is None and
              _health(target) == health_pb2.HealthCheckResponse.SERVING, "the server", 300)
    with grpc.insecure_channel(target) as ch:
        stub = pb2_grpc.GenerationStub(ch)
        stream = stub.Generate(_req(pb2, "Hello", max_tokens=200, ignore_eos=True,
                                    temperature=0), timeout=300)
        next(stream)
        proc.send_signal(signal.SIGTERM)
        _wait_for(lambda: _health(target) == health_pb2.HealthCheckResponse.NOT_SERVING,
                  "the drain to begin")
        with pytest.raises(grpc.RpcError) as e:
            stub.GenerateUnary(_req(pb2, "Hi", max_tokens=2), timeout=30)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in e.value.details()
        last = None
        for last in stream:
            pass
        assert last is not None and last.finished
        assert last.outputs[-1].finish_reason == pb2.FINISH_REASON_LENGTH
        assert last.usage.completion_tokens == 200
    assert proc.wait(timeout=EXIT_TIMEOUT) == 0, proc.stdout.read()
