"""`python -m llmcore.entrypoints.grpc.server` as its own process, and the user example
examples/grpc_client.py against it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import llmcore
from grpc_testlib import FAKE, ROOT

pytestmark = pytest.mark.skipif(FAKE, reason="needs the real engine")


def _env():
    env = {k: v for k, v in os.environ.items() if k != "LLMCORE_API_KEY"}
    pkg_parent = str(Path(llmcore.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH")) if p)
    return env


def test_standalone_server_and_example_client():
    env = _env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmcore.entrypoints.grpc.server", "--host", "127.0.0.1",
         "--grpc-port", "0", "--api-key", "example-key", "--max-model-len", "512",
         "--cpu-kv-cache-space", "0.25"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port = None
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"gRPC server listening on port (\d+)", line)
            if m:
                port = int(m.group(1))
                break
        assert port, "server did not start:\n" + "".join(lines)
        r = subprocess.run([sys.executable, str(ROOT / "examples" / "grpc_client.py"),
                            "--target", f"127.0.0.1:{port}", "--max-tokens", "8",
                            "--api-key", "example-key"],
                           env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        for tag in ("models:", "[stream]", "[unary]", "[chat]", "[tokens]"):
            assert tag in r.stdout
        r = subprocess.run([sys.executable, str(ROOT / "examples" / "grpc_client.py"),
                            "--target", f"127.0.0.1:{port}"],
                           env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and "UNAUTHENTICATED" in r.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
