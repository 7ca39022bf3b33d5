"""Fixtures for the gRPC tests: a real server on a free loopback port, on one engine.

The engine is the real AsyncLLMEngine with the default model (SmolLM2-135M on CPU),
shared by every server of the session. Each server runs in its own thread with its own
event loop, so tests talk to it like any client would: over 127.0.0.1.
LLMCORE_GRPC_FAKE_ENGINE=1 swaps in tests/grpc/fake_engine.py (development only; the
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

from grpc_testlib import FAKE, ServerThread  # noqa: E402

# The default model (SmolLM2-135M-Instruct); a small KV cache keeps start-up fast on CPU.
ENGINE_KW = dict(max_model_len=1024, cpu_kv_cache_space=0.25)


@pytest.fixture(scope="session", autouse=True)
def _no_env_api_key():
    """serve_grpc falls back to $LLMCORE_API_KEY; the tests choose their keys themselves."""
    saved = os.environ.pop("LLMCORE_API_KEY", None)
    yield
    if saved is not None:
        os.environ["LLMCORE_API_KEY"] = saved


@pytest.fixture(scope="session")
def engine():
    if FAKE:
        sys.path.insert(0, str(Path(__file__).parent))
        from fake_engine import FakeEngine
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
def greedy_reference():
    """texts/token ids of llmcore.LLM().generate(..., temperature=0) - the offline API."""
    if FAKE:
        pytest.skip("the fake engine has no offline reference")
    from llmcore import LLM
    from llmcore.sampling_params import SamplingParams

    llm = LLM(**ENGINE_KW)
    cache: dict = {}

    def ref(prompt: str, max_tokens: int):
        key = (prompt, max_tokens)
        if key not in cache:
            out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=max_tokens))[0]
            cache[key] = (out.outputs[0].text, list(out.outputs[0].token_ids))
        return cache[key]

    yield ref
    del llm
