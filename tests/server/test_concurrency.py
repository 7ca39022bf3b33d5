"""Concurrent streams with cancellations: the survivors finish correctly, the cancelled
ones are aborted (all n of them) and their KV blocks freed at once."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx

from server_helpers import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} ([0-9.eE+-]+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def wait_idle(url: str, timeout: float = 5.0) -> tuple[float, float]:
    deadline = time.time() + timeout
    while True:
        text = httpx.get(url + "/metrics").text
        running = _metric(text, "vllm:num_requests_running")
        usage = _metric(text, "vllm:gpu_cache_usage_perc")
        waiting = _metric(text, "vllm:num_requests_waiting")
        if (running == 0 and usage == 0 and waiting == 0) or time.time() > deadline:
            return running + waiting, usage
        time.sleep(0.1)


async def _stream(client: httpx.AsyncClient, url: str, i: int, cancel: bool, n: int = 1):
    body = {"model": "smol", "prompt": f"Story number {i}: once upon a time", "max_tokens": 24,
            "temperature": 0.7, "seed": i, "ignore_eos": True, "stream": True, "n": n,
            "stream_options": {"include_usage": True}}
    text = {}
    chunks = 0
    usage = None
    async with client.stream("POST", url + "/v1/completions", json=body, headers=AUTH) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line:
                continue
            assert line.startswith("data: ")
            data = line[len("data: "):]
            if data == "[DONE]":
                return {"done": True, "text": text, "usage": usage}
            obj = json.loads(data)
            assert "error" not in obj, obj
            for c in obj["choices"]:
                text[c["index"]] = text.get(c["index"], "") + c["text"]
            usage = obj.get("usage")
            chunks += 1
            if cancel and chunks >= 3:
                return {"done": False}  # leaving the block closes the connection mid-stream
    return {"done": False, "truncated": True}


async def test_50_streams_half_cancelled(server):
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        results = await asyncio.gather(*(_stream(client, server.url, i, cancel=(i % 2 == 1))
                                         for i in range(50)))
    for i, res in enumerate(results):
        if i % 2 == 0:
            assert res["done"], res
            assert res["usage"]["completion_tokens"] == 24
            assert len(res["text"][0]) > 0
        else:
            assert not res["done"]
    active, usage = wait_idle(server.url)
    assert active == 0 and usage == 0.0
    assert httpx.get(server.url + "/health").status_code == 200


async def test_disconnect_aborts_all_n(server):
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        res = await _stream(client, server.url, 1, cancel=True, n=3)
    assert not res["done"]
    active, usage = wait_idle(server.url, timeout=3)
    assert active == 0 and usage == 0.0


async def test_non_streaming_disconnect_aborts(server):
    body = {"model": "smol", "prompt": "Tell me a long story", "max_tokens": 480,
            "ignore_eos": True, "n": 2, "temperature": 1.0}
    async with httpx.AsyncClient(timeout=120,
                                 limits=httpx.Limits(max_keepalive_connections=0)) as client:
        task = asyncio.create_task(client.post(server.url + "/v1/completions", json=body,
                                               headers=AUTH))
        # wait until the engine runs it
        for _ in range(100):
            await asyncio.sleep(0.1)
            text = (await client.get(server.url + "/metrics")).text
            if _metric(text, "vllm:num_requests_running") > 0:
                break
        task.cancel()
        try:
            await task
        except BaseException:  # noqa: BLE001
            pass
    t0 = time.time()
    active, usage = wait_idle(server.url, timeout=5)
    assert active == 0 and usage == 0.0
    assert time.time() - t0 < 5
