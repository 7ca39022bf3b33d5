"""A second-language client: tests/grpc/node/client.js (@grpc/grpc-js + @grpc/proto-loader)
streams a generation from the real server; its text must equal the Python client's.

Needs node and `npm ci` in tests/grpc/node (.ci/run does both). Skipped only when node
itself is absent; missing node_modules are installed here with `npm ci` when npm exists.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).parent / "node"
PROMPT = "The capital of France is"
MAX_TOKENS = 12
ENV = {k: v for k, v in os.environ.items() if k != "LLMCORE_API_KEY"}


def _node_ready() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed on this machine (.ci/run installs it; "
                    "the Node.js gRPC client test needs it)")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        npm = shutil.which("npm")
        assert npm, "node is installed but npm is not: cannot install tests/grpc/node deps"
        r = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"npm ci in {NODE_DIR} failed:\n{r.stdout}\n{r.stderr}"
    return node


def _python_stream_text(client, pb2) -> str:
    req = pb2.GenerateRequest(text=PROMPT, sampling_params=pb2.SamplingParams(
        temperature=0, max_tokens=MAX_TOKENS))
    return "".join(c.text for m in client.Generate(req) for c in m.outputs)


def test_node_client_streams(server, client, stubs):
    node = _node_ready()
    pb2, _ = stubs
    expected = _python_stream_text(client, pb2)
    assert expected
    r = subprocess.run([node, "client.js", "--target", server.target, "--prompt", PROMPT,
                        "--max-tokens", str(MAX_TOKENS), "--json", "--expect-text", expected],
                       cwd=NODE_DIR, capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 0, f"node client failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["text"] == expected
    assert out["usage"]["completion_tokens"] == len(out["token_ids"]) > 0
    assert out["finish_reason"] in ("FINISH_REASON_LENGTH", "FINISH_REASON_STOP")
    assert out["messages"] >= 2


def test_node_client_api_key(make_server, stubs):
    node = _node_ready()
    s = make_server(api_key="node-key")
    base = [node, "client.js", "--target", s.target, "--prompt", "Hi", "--max-tokens", "2", "--json"]
    r = subprocess.run(base + ["--api-key", "node-key"], cwd=NODE_DIR, capture_output=True,
                       text=True, timeout=120, env=ENV)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(base + ["--api-key", "wrong"], cwd=NODE_DIR, capture_output=True, text=True,
                       timeout=120, env=ENV)
    assert r.returncode == 2 and "UNAUTHENTICATED" in r.stderr
