"""Helpers shared by the gRPC tests (kept out of conftest.py so that test modules can
import them by a unique name)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from llmcore.config import FrontendArgs

ROOT = Path(__file__).resolve().parents[2]
FAKE = os.environ.get("LLMCORE_GRPC_FAKE_ENGINE") == "1"
PROTO = ROOT / "proto" / "llmcore" / "v1" / "llmcore.proto"


class ServerThread:
    """serve_grpc(engine, args, api_key) on its own event loop thread."""

    def __init__(self, engine: Any, api_key: Optional[str] = None,
                 serve_kw: Optional[dict] = None, **frontend: Any):
        from llmcore.entrypoints.grpc.server import serve_grpc

        frontend.setdefault("host", "127.0.0.1")
        frontend.setdefault("grpc_port", 0)
        self.args = FrontendArgs(**frontend)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="grpc-test-server",
                                       daemon=True)
        self.thread.start()
        self.server = self.run(serve_grpc(engine, self.args, api_key, **(serve_kw or {})))
        self.port = self.server.llmcore_port
        self.target = f"127.0.0.1:{self.port}"

    def run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        try:
            self.run(self.server.stop(0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()


def wait_kv_free(client, pb2, timeout: float = 20.0):
    """Poll GetServerInfo until no request runs and no KV block is used; return the info."""
    deadline = time.monotonic() + timeout
    info = None
    while time.monotonic() < deadline:
        info = client.GetServerInfo(pb2.GetServerInfoRequest())
        if info.num_running == 0 and info.num_waiting == 0 and info.kv_cache_usage == 0.0:
            return info
        time.sleep(0.05)
    return info


# ---------------------------------------------------------------- offline reference
# The default model (SmolLM2-135M-Instruct); a small KV cache keeps start-up fast on CPU.
ENGINE_KW = dict(max_model_len=1024, cpu_kv_cache_space=0.25)
REFERENCE_PROMPTS = ["The capital of France is", "def fibonacci(n):"]
REFERENCE_MAX_TOKENS = 12

_REFERENCE_SCRIPT = """
import json, sys
from llmcore import LLM, SamplingParams
prompts, max_tokens, kw = json.loads(sys.argv[1])
llm = LLM(**kw)
outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=max_tokens), use_tqdm=False)
print("REFERENCE " + json.dumps([[o.outputs[0].text, list(o.outputs[0].token_ids)] for o in outs]))
"""


def child_env() -> dict:
    """The environment for child processes: llmcore importable as in this one, no API key."""
    import llmcore

    env = {k: v for k, v in os.environ.items() if k != "LLMCORE_API_KEY"}
    pkg_parent = str(Path(llmcore.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH")) if p)
    return env


class OfflineReference:
    """`LLM().generate(prompts, SamplingParams(temperature=0, max_tokens=N))`, computed in a
    child process that starts at once, so that its model load overlaps the server's."""

    def __init__(self):
        arg = json.dumps([REFERENCE_PROMPTS, REFERENCE_MAX_TOKENS, ENGINE_KW])
        self.proc = subprocess.Popen([sys.executable, "-c", _REFERENCE_SCRIPT, arg],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=child_env())
        self._result = None

    def get(self, prompt: str, max_tokens: int):
        assert max_tokens == REFERENCE_MAX_TOKENS and prompt in REFERENCE_PROMPTS
        if self._result is None:
            out, err = self.proc.communicate(timeout=300)
            lines = [ln for ln in out.splitlines() if ln.startswith("REFERENCE ")]
            assert self.proc.returncode == 0 and lines, f"LLM.generate failed:\n{out}\n{err}"
            self._result = json.loads(lines[-1][len("REFERENCE "):])
        text, ids = self._result[REFERENCE_PROMPTS.index(prompt)]
        return text, ids

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class StandaloneServer:
    """`python -m llmcore.entrypoints.grpc.server` in a child process, started early (its
    model load overlaps the others'); `port()` waits for it to listen."""

    API_KEY = "example-key"

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmcore.entrypoints.grpc.server", "--host", "127.0.0.1",
             "--grpc-port", "0", "--api-key", self.API_KEY,
             "--max-model-len", str(ENGINE_KW["max_model_len"]),
             "--cpu-kv-cache-space", str(ENGINE_KW["cpu_kv_cache_space"])],
            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list = []
        self._port = None

    def port(self, timeout: float = 300) -> int:
        import re

        deadline = time.monotonic() + timeout
        while self._port is None and time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            m = re.search(r"gRPC server listening on port (\d+)", line)
            if m:
                self._port = int(m.group(1))
        assert self._port, "the standalone server did not start:\n" + "".join(self.lines)
        return self._port

    def stop(self) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CliServer:
    """`llmcore-server --grpc-port P --port Q` (python -m llmcore.entrypoints.cli): gRPC beside
    HTTP on one engine, in a child process started early."""

    def __init__(self):
        self.grpc_port, self.http_port = free_port(), free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmcore.entrypoints.cli", "--host", "127.0.0.1",
             "--port", str(self.http_port), "--grpc-port", str(self.grpc_port),
             "--max-model-len", str(ENGINE_KW["max_model_len"]),
             "--cpu-kv-cache-space", str(ENGINE_KW["cpu_kv_cache_space"])],
            env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def wait_ready(self, timeout: float = 300) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, "llmcore-server exited:\n" + self.proc.stderr.read()
                try:
                    r = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.5)
        raise AssertionError("llmcore-server --grpc-port did not become ready")

    def stop(self) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
