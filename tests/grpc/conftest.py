"""Fixtures for the gRPC tests: a real server on a free loopback port, on one engine.

The engine is the real AsyncLLMEngine with the default model (SmolLM2-135M on CPU),
shared by every server of the session. Each server runs in its own thread with its own
event loop, so tests talk to it like any client would: over 127.0.0.1.
LLMCORE_GRPC_FAKE_ENGINE=1 swaps in tests/grpc/fake_engine.py (development only; the
tests that compare with LLM.generate are skipped then).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import threading
from pathlib import Path
from typing import Any, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
try:
    import llmcore  # noqa: F401
except ImportError:  # a source checkout that was not installed
    sys.path.insert(0, str(ROOT / "python"))

import grpc  # noqa: E402

from llmcore.config import FrontendArgs  # noqa: E402

FAKE = os.environ.get("LLMCORE_GRPC_FAKE_ENGINE") == "1"
PROTO = ROOT / "proto" / "llmcore" / "v1" / "llmcore.proto"


class ServerThread:
    """serve_grpc(engine, args, api_key) on its own event loop thread."""

    def __init__(self, engine: Any, api_key: Optional[str] = None, max_inflight: Optional[int] = None,
                 **frontend: Any):
        from llmcore.entrypoints.grpc.server import serve_grpc

        frontend.setdefault("host", "127.0.0.1")
        frontend.setdefault("grpc_port", 0)
        self.args = FrontendArgs(**frontend)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="grpc-test-server",
                                       daemon=True)
        self.thread.start()
        self.server = self.run(serve_grpc(engine, self.args, api_key, max_inflight=max_inflight))
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


@pytest.fixture(scope="session")
def engine():
    if FAKE:
        sys.path.insert(0, str(Path(__file__).parent))
        from fake_engine import FakeEngine
        yield FakeEngine()
        return
    from llmcore.config import EngineArgs
    from llmcore.engine.async_engine import AsyncLLMEngine

    eng = AsyncLLMEngine.from_engine_args(EngineArgs())
    yield eng
    eng.shutdown()


@pytest.fixture(scope="session")
def server(engine):
    s = ServerThread(engine)
    yield s
    s.stop()


@pytest.fixture
def make_server(engine):
    """Start extra servers (API key, TLS, small limits) on the same engine."""
    started = []

    def make(eng: Any = None, **kw) -> ServerThread:
        s = ServerThread(eng if eng is not None else engine, **kw)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


@pytest.fixture(scope="session")
def stubs():
    from llmcore.entrypoints.grpc._stubs import pb2, pb2_grpc
    return pb2, pb2_grpc


@pytest.fixture
def channel(server):
    ch = grpc.insecure_channel(server.target)
    yield ch
    ch.close()


@pytest.fixture
def client(channel, stubs):
    return stubs[1].GenerationStub(channel)


@pytest.fixture(scope="session")
def greedy_reference():
    """texts/token ids of llmcore.LLM().generate(..., temperature=0) - the offline API."""
    if FAKE:
        pytest.skip("the fake engine has no offline reference")
    from llmcore import LLM
    from llmcore.sampling_params import SamplingParams

    llm = LLM()
    cache: dict = {}

    def ref(prompt: str, max_tokens: int):
        key = (prompt, max_tokens)
        if key not in cache:
            out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=max_tokens))[0]
            cache[key] = (out.outputs[0].text, list(out.outputs[0].token_ids))
        return cache[key]

    yield ref
    del llm


def wait_kv_free(client, pb2, timeout: float = 20.0):
    """Poll GetServerInfo until no request runs and no KV block is used; return the info."""
    import time

    deadline = time.monotonic() + timeout
    info = None
    while time.monotonic() < deadline:
        info = client.GetServerInfo(pb2.GetServerInfoRequest())
        if info.num_running == 0 and info.num_waiting == 0 and info.kv_cache_usage == 0.0:
            return info
        time.sleep(0.05)
    return info


def replace_args(args: FrontendArgs, **kw) -> FrontendArgs:
    return dataclasses.replace(args, **kw)
