"""--ssl-* and --grpc-port through the real start-up path (`cli.serve` -> uvicorn, gRPC in
the same event loop), with the fake engine so no model load is needed: real TLS over
loopback, real gRPC health check."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import time

import httpx
import pytest

from server_helpers import HOST, _pythonpath, free_port

HERE = os.path.dirname(os.path.abspath(__file__))

SCRIPT = """
import asyncio, sys
from fake_engine import FakeEngine
from llmcore.entrypoints.cli import prepare, serve
ea, fa, key, tmpl = prepare(sys.argv[1:])
asyncio.run(serve(FakeEngine(), ea, fa, key, tmpl))
"""


def _spawn(args):
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + _pythonpath())
    env.pop("LLMCORE_API_KEY", None)
    return subprocess.Popen([sys.executable, "-c", SCRIPT, "--host", HOST, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stop(proc):
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_ssl_flags(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    port = free_port()
    proc = _spawn(["--port", str(port), "--ssl-keyfile", str(key), "--ssl-certfile", str(cert)])
    try:
        url = f"https://{HOST}:{port}"
        ctx = ssl.create_default_context(cafile=str(cert))
        deadline = time.time() + 60
        while True:
            try:
                r = httpx.get(url + "/health", verify=ctx, timeout=2)
                break
            except httpx.HTTPError:
                if time.time() > deadline or proc.poll() is not None:
                    raise AssertionError(_stop(proc))
                time.sleep(0.2)
        assert r.status_code == 200
        r = httpx.post(url + "/v1/completions", verify=ctx, timeout=30,
                       json={"model": "fake", "prompt": "hi", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not served
            httpx.get(f"http://{HOST}:{port}/health", timeout=2)
    finally:
        _stop(proc)


def test_grpc_beside_http():
    grpc = pytest.importorskip("grpc")
    try:
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        import llmcore.entrypoints.grpc.server  # noqa: F401
    except ImportError as e:
        pytest.skip(f"gRPC front end not available: {e}")
    port, gport = free_port(), free_port()
    proc = _spawn(["--port", str(port), "--grpc-port", str(gport)])
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"http://{HOST}:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                raise AssertionError(_stop(proc))
            time.sleep(0.2)
        with grpc.insecure_channel(f"{HOST}:{gport}") as channel:
            resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                             timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        _stop(proc)
