"""`python -m llmcore.entrypoints.grpc.server` as its own process (started at session start
by conftest), and the user example examples/grpc_client.py against it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from grpc_testlib import FAKE, ROOT, child_env

pytestmark = pytest.mark.skipif(FAKE, reason="needs the real engine")


def test_standalone_server_and_example_client(standalone_server):
    port = standalone_server.port()
    example = [sys.executable, str(ROOT / "examples" / "grpc_client.py"),
               "--target", f"127.0.0.1:{port}", "--max-tokens", "8"]
    r = subprocess.run(example + ["--api-key", standalone_server.API_KEY], env=child_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for tag in ("models:", "[stream]", "[unary]", "[chat]", "[tokens]"):
        assert tag in r.stdout
    r = subprocess.run(example, env=child_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "UNAUTHENTICATED" in r.stderr
    assert standalone_server.stop() == 0, "".join(standalone_server.lines) + \
        standalone_server.proc.stdout.read()
