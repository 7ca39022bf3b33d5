"""Helpers shared by the gRPC tests (kept out of conftest.py so that test modules can
import them by a unique name)."""

from __future__ import annotations

import asyncio
import os
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
