"""Soak test of the OpenAI server: a real `llmcore-server` subprocess on 127.0.0.1 serving a
tiny random Llama on the CPU, `--streams` concurrent clients for `--duration` seconds, each
looping over a random mix of

- streams read to the end (completions and chat, SSE), plus a few non-streaming requests,
- cancels: the client stops reading after a few tokens and closes the stream,
- disconnects: a raw socket sends a streaming request and is reset mid-stream,
- bad requests (unknown model, negative max_tokens, bad temperature, a prompt longer than
  the context, empty messages, malformed JSON): each must get a 4xx, never a 5xx.

Checked at the end (the table's last column; the JSON has every figure):
- no 5xx (none is documented for a healthy engine: 503 means the engine is dead or draining),
- the server's RSS (server + engine-core processes) stays within --rss-tolerance of its value
  after the warm-up window (the first minute, or a quarter of a short run),
- 0 KV blocks in use and no request running or waiting once traffic stops (/metrics),
- p99 inter-token latency of the last window within --itl-ratio x the first window's.

    python benchmarks/soak.py --duration 600 --streams 200 --json soak.json

All traffic goes to 127.0.0.1; every loop is bounded by the deadline and per-request
timeouts. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional

HOST = "127.0.0.1"
MODEL_NAME = "soak"
VOCAB = 512
MAX_MODEL_LEN = 512
CHAT_TEMPLATE = ("{% for m in messages %}t3 {{ m['content'] }} t4 {% endfor %}"
                 "{% if add_generation_prompt %}t5{% endif %}")
REQUEST_TIMEOUT = 120.0
KV_BLOCKS = 4096      # 64k tokens: 200 streams of <= 216 tokens need <= 2800 blocks


# --------------------------------------------------------------------------- model + server
def build_tiny_model(out: str, seed: int = 0) -> str:
    """A 2-layer random Llama with a word-level tokenizer (token i = "t<i>")."""
    import torch
    import transformers as tf

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from synthetic_tokenizer import write_tokenizer

    cfg = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=MAX_MODEL_LEN, bos_token_id=1, eos_token_id=2,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    tf.LlamaForCausalLM(cfg).save_pretrained(out)
    write_tokenizer(VOCAB, out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def server_command(model: str, port: int, extra: list) -> list:
    exe = os.path.join(os.path.dirname(sys.executable), "llmcore-server")
    head = [exe] if os.path.exists(exe) else [sys.executable, "-m",
                                              "llmcore.entrypoints.openai.api_server"]
    return head + ["--model", model, "--served-model-name", MODEL_NAME, "--host", HOST,
                   "--port", str(port), "--max-model-len", str(MAX_MODEL_LEN),
                   # a pool the traffic cycles through within the warm-up, so that its pages
                   # are resident by then (RSS grows as blocks are first written)
                   "--max-num-seqs", "256", "--num-gpu-blocks-override", str(KV_BLOCKS),
                   "--swap-space", "0",
                   "--chat-template", CHAT_TEMPLATE, "--disable-log-requests",
                   "--disable-log-stats", "--uvicorn-log-level", "warning", *extra]


def process_tree_rss(pid: int) -> int:
    return sum(process_tree_rss_by_pid(pid).values())


def process_tree_rss_by_pid(pid: int) -> dict:
    """{pid: bytes of RSS} of pid and all its descendants (from /proc)."""
    children: dict = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        out[p] = int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return out


# --------------------------------------------------------------------------- traffic
@dataclass
class Stats:
    t0: float
    actions: dict = field(default_factory=dict)
    statuses: dict = field(default_factory=dict)
    unexpected: list = field(default_factory=list)     # (action, status or error, detail)
    stream_errors: int = 0                              # error events inside 200 streams
    tokens: int = 0
    itl: list = field(default_factory=list)             # (seconds since t0, gap in seconds)

    def count(self, d: dict, key) -> None:
        d[key] = d.get(key, 0) + 1


def _prompt(rng: random.Random, n: int) -> str:
    return " ".join(f"t{rng.randrange(6, VOCAB)}" for _ in range(n))


def _body(rng: random.Random, chat: bool, stream: bool) -> tuple[str, dict]:
    n_in, n_out = rng.randint(4, 120), rng.randint(8, 96)
    common = {"model": MODEL_NAME, "max_tokens": n_out, "stream": stream,
              "temperature": rng.choice([0.0, 0.7, 1.0]), "ignore_eos": rng.random() < 0.5}
    if chat:
        return "/v1/chat/completions", dict(common, messages=[
            {"role": "user", "content": _prompt(rng, n_in)}])
    return "/v1/completions", dict(common, prompt=_prompt(rng, n_in))


BAD_REQUESTS = [
    ("/v1/completions", {"model": "no-such-model", "prompt": "t7", "max_tokens": 4}),
    ("/v1/completions", {"model": MODEL_NAME, "prompt": "t7", "max_tokens": -3}),
    ("/v1/completions", {"model": MODEL_NAME, "prompt": "t7", "temperature": -1.0}),
    ("/v1/completions", {"model": MODEL_NAME, "prompt": "t9 " * (MAX_MODEL_LEN + 50),
                         "max_tokens": 4}),
    ("/v1/chat/completions", {"model": MODEL_NAME, "messages": []}),
    ("/v1/completions", {"model": MODEL_NAME, "prompt": [VOCAB + 5], "max_tokens": 2}),
    ("/v1/completions", None),                          # malformed JSON
]


async def _read_stream(client, path: str, body: dict, stats: Stats, stop_after: Optional[int],
                       action: str) -> None:
    last = None
    n = 0
    async with client.stream("POST", path, json=body, timeout=REQUEST_TIMEOUT) as r:
        stats.count(stats.statuses, r.status_code)
        if r.status_code >= 500:
            stats.unexpected.append((action, r.status_code, (await r.aread()).decode()[:200]))
            return
        if r.status_code != 200:
            stats.unexpected.append((action, r.status_code, (await r.aread()).decode()[:200]))
            return
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            msg = json.loads(line[6:])
            if "error" in msg:
                stats.stream_errors += 1
                stats.unexpected.append((action, "stream error", str(msg["error"])[:200]))
                return
            ch = msg.get("choices") or [{}]
            piece = ch[0].get("text") or (ch[0].get("delta") or {}).get("content")
            if not piece:
                continue
            now = time.perf_counter()
            if last is not None:
                stats.itl.append((now - stats.t0, now - last))
            last = now
            n += 1
            stats.tokens += 1
            if stop_after is not None and n >= stop_after:
                return   # leaving the block closes the connection mid-stream


async def _disconnect(port: int, rng: random.Random, stats: Stats) -> None:
    """A raw HTTP/1.1 streaming request; the socket is reset after a few chunks."""
    path, body = _body(rng, chat=rng.random() < 0.5, stream=True)
    body["max_tokens"] = 96
    data = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
        code = int(status.split()[1]) if status.startswith(b"HTTP/") else 0
        stats.count(stats.statuses, code)
        if code != 200:
            stats.unexpected.append(("disconnect", code, status.decode(errors="replace")[:200]))
            return
        want = rng.randint(1, 8)
        got = 0
        while got < want:
            line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
            if not line:
                break
            if line.startswith(b"data: {"):
                got += 1
    finally:
        writer.transport.abort()   # RST: the client vanishes mid-stream


async def _worker(i: int, client, port: int, deadline: float, seed: int, stats: Stats) -> None:
    import httpx

    rng = random.Random(seed * 1000 + i)
    if True:  # one shared client (an SSL context per client would cost ~50 ms each)
        while time.perf_counter() < deadline:
            r = rng.random()
            action = ("stream" if r < 0.6 else "unary" if r < 0.7 else "cancel" if r < 0.8
                      else "disconnect" if r < 0.9 else "bad")
            stats.count(stats.actions, action)
            try:
                if action in ("stream", "cancel"):
                    path, body = _body(rng, chat=rng.random() < 0.5, stream=True)
                    await _read_stream(client, path, body, stats,
                                       rng.randint(1, 6) if action == "cancel" else None, action)
                elif action == "unary":
                    path, body = _body(rng, chat=rng.random() < 0.5, stream=False)
                    resp = await client.post(path, json=body)
                    stats.count(stats.statuses, resp.status_code)
                    if resp.status_code != 200:
                        stats.unexpected.append((action, resp.status_code, resp.text[:200]))
                elif action == "disconnect":
                    await _disconnect(port, rng, stats)
                else:
                    path, body = rng.choice(BAD_REQUESTS)
                    if body is None:
                        resp = await client.post(path, content=b"{not json",
                                                 headers={"Content-Type": "application/json"})
                    else:
                        resp = await client.post(path, json=body)
                    stats.count(stats.statuses, resp.status_code)
                    if not 400 <= resp.status_code < 500:
                        stats.unexpected.append((action, resp.status_code, resp.text[:200]))
            except (httpx.HTTPError, OSError, asyncio.TimeoutError) as e:
                stats.unexpected.append((action, type(e).__name__, str(e)[:200]))


async def _rss_sampler(pid: int, t0: float, deadline: float, out: list, every: float) -> None:
    while time.perf_counter() < deadline:
        out.append((time.perf_counter() - t0, process_tree_rss(pid)))
        await asyncio.sleep(every)
    out.append((time.perf_counter() - t0, process_tree_rss(pid)))


async def _metrics(port: int) -> dict:
    import httpx

    async with httpx.AsyncClient(timeout=30) as c:
        text = (await c.get(f"http://{HOST}:{port}/metrics")).text
    out = {}
    for line in text.splitlines():
        if line.startswith("vllm:") and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            key = name.split("{")[0]
            if key in ("vllm:kv_cache_usage_perc", "vllm:num_requests_running",
                       "vllm:num_requests_waiting", "vllm:num_requests_swapped"):
                out[key] = float(value)
    return out


async def _idle_metrics(port: int, wait_s: float = 60.0) -> dict:
    """Poll /metrics (bounded) until nothing runs and no KV block is in use."""
    end = time.perf_counter() + wait_s
    m = await _metrics(port)
    while time.perf_counter() < end and (m.get("vllm:kv_cache_usage_perc", 1) > 0
                                         or m.get("vllm:num_requests_running", 1) > 0
                                         or m.get("vllm:num_requests_waiting", 1) > 0):
        await asyncio.sleep(0.5)
        m = await _metrics(port)
    return m


def _p(values: list, q: float) -> Optional[float]:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# --------------------------------------------------------------------------- run
async def _warm_up(port: int) -> None:
    """A few requests before the clock starts (first-step set-up, oneDNN packing...)."""
    import httpx

    rng = random.Random(12345)
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=REQUEST_TIMEOUT) as c:
        for chat in (False, True):
            path, body = _body(rng, chat=chat, stream=False)
            (await c.post(path, json=body)).raise_for_status()


async def soak(port: int, pid: int, duration: float, streams: int, seed: int) -> dict:
    import httpx

    await _warm_up(port)
    stats = Stats(t0=time.perf_counter())
    deadline = stats.t0 + duration
    rss: list = []
    sampler = asyncio.create_task(_rss_sampler(pid, stats.t0, deadline, rss,
                                                every=max(1.0, duration / 120)))
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=REQUEST_TIMEOUT,
                                 # a new connection per request: a pooled one that the server
                                 # closes as idle while a request is sent on it is a client race
                                 limits=httpx.Limits(max_connections=2 * streams,
                                                     max_keepalive_connections=0)) as client:
        await asyncio.gather(*(_worker(i, client, port, deadline, seed, stats)
                               for i in range(streams)))
    await sampler
    traffic_s = time.perf_counter() - stats.t0
    idle = await _idle_metrics(port)
    window = min(60.0, duration / 4)
    first = [g for t, g in stats.itl if t < window]
    last = [g for t, g in stats.itl if duration - window <= t < duration]
    base = [r for t, r in rss if t >= window]
    rss_base = base[0] if base else None
    rss_dev = max(abs(r - rss_base) / rss_base for r in base) if base else None
    return dict(duration_s=duration, traffic_s=round(traffic_s, 1), streams=streams, seed=seed,
                window_s=window, actions=stats.actions,
                statuses={str(k): v for k, v in sorted(stats.statuses.items(), key=str)},
                unexpected=stats.unexpected[:50], num_unexpected=len(stats.unexpected),
                num_5xx=sum(v for k, v in stats.statuses.items()
                            if isinstance(k, int) and k >= 500),
                stream_errors=stats.stream_errors, tokens=stats.tokens,
                itl_first_p50_ms=_ms(_p(first, 0.5)), itl_first_p99_ms=_ms(_p(first, 0.99)),
                itl_last_p50_ms=_ms(_p(last, 0.5)), itl_last_p99_ms=_ms(_p(last, 0.99)),
                itl_samples_first=len(first), itl_samples_last=len(last),
                rss_after_warmup_mib=_mib(rss_base), rss_final_mib=_mib(rss[-1][1] if rss else None),
                rss_max_mib=_mib(max(r for _, r in rss) if rss else None),
                rss_max_deviation=round(rss_dev, 4) if rss_dev is not None else None,
                rss_samples=[(round(t, 1), _mib(r)) for t, r in rss],
                rss_by_process_end_mib={str(k): _mib(v)
                                        for k, v in process_tree_rss_by_pid(pid).items()},
                end_metrics=idle)


def _ms(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(1000 * x, 2)


def _mib(x: Optional[int]) -> Optional[float]:
    return None if x is None else round(x / 2**20, 1)


def check(res: dict, rss_tolerance: float, itl_ratio: float) -> dict:
    m = res["end_metrics"]
    p_first, p_last = res["itl_first_p99_ms"], res["itl_last_p99_ms"]
    return {
        "no 5xx": res["num_5xx"] == 0,
        "no unexpected response": res["num_unexpected"] == 0,
        f"RSS within +-{rss_tolerance:.0%} after warm-up": (
            res["rss_max_deviation"] is not None and res["rss_max_deviation"] <= rss_tolerance),
        "0 KV blocks in use at the end": m.get("vllm:kv_cache_usage_perc") == 0.0,
        "no request left running/waiting": (m.get("vllm:num_requests_running") == 0.0
                                            and m.get("vllm:num_requests_waiting") == 0.0),
        f"p99 ITL last/first <= {itl_ratio}": (
            p_first is not None and p_last is not None and p_last <= itl_ratio * p_first),
    }


def print_table(res: dict, checks: dict) -> None:
    rows = [
        ("duration / streams", f"{res['duration_s']:.0f} s / {res['streams']}"),
        ("requests by action", ", ".join(f"{k} {v}" for k, v in sorted(res["actions"].items()))),
        ("HTTP statuses", ", ".join(f"{k}: {v}" for k, v in res["statuses"].items())),
        ("5xx / unexpected / stream errors",
         f"{res['num_5xx']} / {res['num_unexpected']} / {res['stream_errors']}"),
        ("tokens streamed", str(res["tokens"])),
        (f"ITL p50 / p99, first {res['window_s']:.0f} s",
         f"{res['itl_first_p50_ms']} / {res['itl_first_p99_ms']} ms"),
        (f"ITL p50 / p99, last {res['window_s']:.0f} s",
         f"{res['itl_last_p50_ms']} / {res['itl_last_p99_ms']} ms"),
        ("RSS after warm-up / final / max", f"{res['rss_after_warmup_mib']} / "
         f"{res['rss_final_mib']} / {res['rss_max_mib']} MiB"),
        ("RSS max deviation after warm-up", f"{100 * (res['rss_max_deviation'] or 0):.1f} %"),
        ("at the end: KV usage, running, waiting",
         f"{res['end_metrics'].get('vllm:kv_cache_usage_perc')}, "
         f"{res['end_metrics'].get('vllm:num_requests_running')}, "
         f"{res['end_metrics'].get('vllm:num_requests_waiting')}"),
    ]
    w = max(len(r[0]) for r in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    print()
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=600.0, help="seconds of traffic")
    p.add_argument("--streams", type=int, default=200, help="concurrent clients")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="model folder (default: a tiny random Llama)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--rss-tolerance", type=float, default=0.10)
    p.add_argument("--itl-ratio", type=float, default=1.5)
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra llmcore-server flag (repeatable), e.g. --server-arg=--seed=1")
    a = p.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="llmcore-soak-")
    port = free_port()
    log_path = os.path.join(tmp, "server.log")
    server = None
    try:
        model = a.model or build_tiny_model(os.path.join(tmp, "model"), a.seed)
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        with open(log_path, "w") as log:
            server = subprocess.Popen(server_command(model, port, a.server_arg), env=env,
                                      stdout=log, stderr=subprocess.STDOUT)
        _wait_ready(port, server, log_path)
        res = asyncio.run(soak(port, server.pid, a.duration, a.streams, a.seed))
        res["server_exit_code_before_stop"] = server.poll()
    finally:
        if server is not None and server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        log_tail = open(log_path).read()[-3000:] if os.path.exists(log_path) else ""
        shutil.rmtree(tmp, ignore_errors=True)
    res["server_exit_code"] = server.returncode if server is not None else None
    res["server_log_tail"] = log_tail
    checks = check(res, a.rss_tolerance, a.itl_ratio)
    res["checks"] = checks
    print_table(res, checks)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if all(checks.values()) else 1


def _wait_ready(port: int, server: subprocess.Popen, log_path: str, timeout: float = 300) -> None:
    import httpx

    end = time.time() + timeout
    while time.time() < end:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}:\n"
                               f"{open(log_path).read()[-3000:]}")
        try:
            if httpx.get(f"http://{HOST}:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not ready in {timeout} s:\n{open(log_path).read()[-3000:]}")


if __name__ == "__main__":
    sys.exit(main())
