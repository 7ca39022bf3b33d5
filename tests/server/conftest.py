"""Fixtures for the HTTP server tests: real uvicorn on a free loopback port, real HTTP.

- `server` (module scope): `python -m llmcore.entrypoints.openai.api_server` as a
  subprocess serving the default model (SmolLM2-135M) - the real engine.
- `start_server(*flags)`: the same with extra flags (API key, CORS, root path ...).
- `fake_server(engine, **kw)`: uvicorn in a thread serving `build_app(FakeEngine)`, for
  engine states a real engine cannot be put in on demand (a dead engine loop).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Optional

import httpx
import pytest

from server_helpers import API_KEY, HOST, MAX_MODEL_LEN, SESSION_FLAGS, _pythonpath, free_port

START_TIMEOUT = float(os.environ.get("LLMCORE_TEST_SERVER_START_TIMEOUT", "240"))


class ServerProcess:
    def __init__(self, args: list[str], env: Optional[dict] = None, scheme: str = "http",
                 health_path: str = "/health"):
        self.port = free_port()
        self.scheme = scheme
        self.url = f"{scheme}://{HOST}:{self.port}"
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = _pythonpath()
        full_env.setdefault("OMP_NUM_THREADS", "2")
        full_env.pop("LLMCORE_API_KEY", None)
        full_env.update(env or {})
        cmd = [sys.executable, "-m", "llmcore.entrypoints.openai.api_server", "--host", HOST,
               "--port", str(self.port), "--uvicorn-log-level", "warning",
               "--disable-log-requests", *args]
        self.log_path = os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                     f"llmcore-server-{self.port}.log")
        self._log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(cmd, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)
        self.health_path = health_path

    def wait_ready(self, verify=True) -> "ServerProcess":
        deadline = time.time() + START_TIMEOUT
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                r = httpx.get(self.url + self.health_path, timeout=2, verify=verify)
                if r.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"server did not start in {START_TIMEOUT}s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        with open(self.log_path) as f:
            return f.read()[-5000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _load_llm():
    from llmcore import LLM

    return LLM(max_model_len=MAX_MODEL_LEN, cpu_kv_cache_space=0.25, swap_space=0)


@pytest.fixture(scope="session")
def _server_proc(request) -> Iterator[ServerProcess]:
    srv = ServerProcess(SESSION_FLAGS)
    # Load the offline LLM (if any selected test needs it) while the server starts.
    pool = None
    if any("llm" in getattr(item, "fixturenames", ()) for item in request.session.items):
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(1)
        srv.llm_future = pool.submit(_load_llm)
    yield srv
    srv.stop()
    if pool is not None:
        pool.shutdown(wait=False)


@pytest.fixture(scope="session")
def server(_server_proc) -> ServerProcess:
    """The default model (real engine), served once for the whole session, with an API key,
    a root path and a CORS origin list (all from the command line)."""
    return _server_proc.wait_ready()


@pytest.fixture(scope="session")
def auth() -> dict:
    return {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="session")
def llm(_server_proc):
    """The offline LLM on the same model (loaded while the server process starts)."""
    fut = getattr(_server_proc, "llm_future", None)
    return fut.result() if fut is not None else _load_llm()


@pytest.fixture
def start_server():
    started: list[ServerProcess] = []

    def start(*args: str, env: Optional[dict] = None, scheme: str = "http", wait: bool = True,
              health_path: str = "/health", verify=True) -> ServerProcess:
        srv = ServerProcess(list(args), env=env, scheme=scheme, health_path=health_path)
        started.append(srv)
        return srv.wait_ready(verify=verify) if wait else srv

    yield start
    for srv in started:
        srv.stop()


class _ThreadServer:
    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("in-process server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def fake_server():
    @contextmanager
    def make(engine, frontend_args=None, engine_args=None, **kw):
        from llmcore.entrypoints.openai.api_server import build_app

        with _ThreadServer(build_app(engine, frontend_args, engine_args, **kw)) as srv:
            yield srv

    return make


@pytest.fixture(scope="module")
def start_module_server():
    """start_server for servers a whole test module shares."""
    started: list[ServerProcess] = []

    def start(*args: str, env: Optional[dict] = None) -> ServerProcess:
        srv = ServerProcess(list(args), env=env)
        started.append(srv)
        return srv.wait_ready()

    yield start
    for srv in started:
        srv.stop()
