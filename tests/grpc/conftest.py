"""Fixtures for the gRPC tests: a real server on a free loopback port, on one engine.

The engine is the real AsyncLLMEngine with the default model (SmolLM2-135M on CPU),
shared by every server of the session. Each server runs in its own thread with its own
event loop, so tests talk to it like any client would: over 127.0.0.1.
LLMCORE_GRPC_FAKE_ENGINE=1 swaps in tests/grpc/grpc_fake_engine.py (development only; the
tests that compare with LLM.generate are skipped then).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
try:
    import llmcore  # noqa: F401
except ImportError:  # a source checkout that was not installed
    sys.path.insert(0, str(ROOT / "python"))

sys.path.insert(0, str(Path(__file__).resolve().parent))
import grpc  # noqa: E402

from grpc_testlib import (ENGINE_KW, FAKE, CliServer, OfflineReference,  # noqa: E402
                          ServerThread, StandaloneServer)


@pytest.fixture(scope="session", autouse=True)
def _no_env_api_key():
    """serve_grpc falls back to $LLMCORE_API_KEY; the tests choose their keys themselves."""
    saved = os.environ.pop("LLMCORE_API_KEY", None)
    yield
    if saved is not None:
        os.environ["LLMCORE_API_KEY"] = saved


@pytest.fixture(scope="session", autouse=True)
def _children(_no_env_api_key):
    """Started first, so that their model loads overlap the engine's: the offline
    reference (LLM.generate), the standalone server (python -m ...grpc.server) and
    llmcore-server with HTTP and gRPC."""
    if FAKE:
        yield None, None, None
        return
    children = OfflineReference(), StandaloneServer(), CliServer()
    yield children
    children[0].close()
    children[1].stop()
    children[2].stop()


@pytest.fixture(scope="session")
def standalone_server(_children):
    return _children[1]


@pytest.fixture(scope="session")
def cli_server(_children):
    return _children[2]


@pytest.fixture(scope="session")
def engine():
    if FAKE:
        sys.path.insert(0, str(Path(__file__).parent))
        from grpc_fake_engine import FakeEngine
        yield FakeEngine()
        return
    from llmcore.config import EngineArgs
    from llmcore.engine.async_engine import AsyncLLMEngine

    eng = AsyncLLMEngine.from_engine_args(EngineArgs(**ENGINE_KW))
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
def greedy_reference(_children):
    """(text, token ids) of llmcore.LLM().generate(..., temperature=0) - the offline API."""
    if FAKE:
        pytest.skip("the fake engine has no offline reference")
    return _children[0].get
