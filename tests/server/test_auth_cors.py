"""--api-key on every /v1 route, CORS preflight, --root-path (session server flags)."""

from __future__ import annotations

import httpx
import pytest

from server_helpers import ALLOWED_ORIGIN, API_KEY, ROOT_PATH

V1_ROUTES = [("GET", "/v1/models", None),
             ("POST", "/v1/completions", {"model": "smol", "prompt": "hi", "max_tokens": 1}),
             ("POST", "/v1/chat/completions",
              {"model": "smol", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
             ("GET", "/v1/no-such-route", None)]


@pytest.mark.parametrize("prefix", ["", ROOT_PATH])
@pytest.mark.parametrize("method,path,body", V1_ROUTES, ids=[r[1] for r in V1_ROUTES])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": API_KEY},
                                     {"Authorization": f"Bearer {API_KEY}x"}],
                         ids=["none", "wrong", "no-bearer", "longer"])
def test_v1_needs_key(server, prefix, method, path, body, headers):
    r = httpx.request(method, server.url + prefix + path, json=body, headers=headers, timeout=60)
    assert r.status_code == 401
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("prefix", ["", ROOT_PATH])
def test_v1_with_key(server, prefix):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    assert httpx.get(server.url + prefix + "/v1/models", headers=auth).status_code == 200
    r = httpx.post(server.url + prefix + "/v1/completions", headers=auth, timeout=60,
                   json={"model": "smol", "prompt": "hi", "max_tokens": 1})
    assert r.status_code == 200


def test_non_v1_routes_open(server):
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.get(server.url + "/version").status_code == 200
    assert httpx.get(server.url + "/metrics").status_code == 200


def test_cors_preflight(server):
    r = httpx.options(server.url + "/v1/completions", headers={
        "Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    # a disallowed origin gets no CORS grant
    r = httpx.options(server.url + "/v1/completions", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert r.status_code == 400
    assert r.headers.get("access-control-allow-origin") != "http://evil.example"
    # simple request: the allowed origin is echoed back, also on a 401
    r = httpx.get(server.url + "/v1/models", headers={"Origin": ALLOWED_ORIGIN})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
