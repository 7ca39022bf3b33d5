"""`python -m llmcore.entrypoints.grpc.server` and `llmcore-server --grpc-port` as their own
processes (started at session start by conftest), and the user example
examples/grpc_client.py against the first."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import grpc

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


def test_llmcore_server_serves_grpc_beside_http(cli_server, stubs):
    pb2, pb2_grpc = stubs
    cli_server.wait_ready()
    with grpc.insecure_channel(f"127.0.0.1:{cli_server.grpc_port}") as ch:
        stub = pb2_grpc.GenerationStub(ch)
        grpc_ids = [m.id for m in stub.ListModels(pb2.ListModelsRequest(), timeout=30).models]
        req = pb2.GenerateRequest(text="The capital of France is",
                                  sampling_params=pb2.SamplingParams(temperature=0, max_tokens=6))
        grpc_text = stub.GenerateUnary(req, timeout=60).outputs[0].text
    base = f"http://127.0.0.1:{cli_server.http_port}"
    with urllib.request.urlopen(base + "/v1/models", timeout=30) as r:
        http_ids = [m["id"] for m in json.load(r)["data"]]
    assert grpc_ids == http_ids
    body = json.dumps({"model": http_ids[0], "prompt": "The capital of France is",
                       "temperature": 0, "max_tokens": 6}).encode()
    http_req = urllib.request.Request(base + "/v1/completions", data=body,
                                      headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(http_req, timeout=60) as r:
        assert json.load(r)["choices"][0]["text"] == grpc_text
