"""Online serving benchmark, in the style of vLLM's benchmarks/benchmark_serving.py.

Sends streaming requests to an OpenAI-compatible server (llmcore, vLLM, ...) at a given
request rate and reports request throughput, output tokens/s, TTFT, TPOT and ITL
(mean, median, p99). Prints a table and writes JSON.

    python benchmarks/serving.py --backend openai --base-url http://127.0.0.1:8000 \
        --dataset-name random --random-input-len 128 --random-output-len 64 \
        --num-prompts 100 --request-rate inf

Prompts of the random dataset are random token ids turned into text with the server's
/detokenize (llmcore and vLLM both have it) or, with --tokenizer, a local HF tokenizer;
with neither, token-id prompts are sent (completions only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime

import httpx
import numpy as np

from report import write_json


@dataclass
class RequestInput:
    prompt: object          # str or list of token ids
    prompt_len: int
    output_len: int


@dataclass
class RequestResult:
    success: bool = False
    prompt_len: int = 0
    output_tokens: int = 0
    generated_text: str = ""
    ttft: float = 0.0
    latency: float = 0.0
    itl: list = field(default_factory=list)
    error: str = ""


# ----------------------------------------------------------------------------- dataset
def sample_random_requests(args, client_base: str, headers: dict) -> list[RequestInput]:
    rng = np.random.default_rng(args.seed)
    lo_in = max(1, int(args.random_input_len * args.random_range_ratio))
    lo_out = max(1, int(args.random_output_len * args.random_range_ratio))
    input_lens = rng.integers(lo_in, args.random_input_len + 1, size=args.num_prompts)
    output_lens = rng.integers(lo_out, args.random_output_len + 1, size=args.num_prompts)
    offsets = rng.integers(0, args.random_vocab_size, size=args.num_prompts)
    id_prompts = []
    for i in range(args.num_prompts):
        ids = [int((offsets[i] + i + j) % (args.random_vocab_size - 1000) + 1000)
               for j in range(int(input_lens[i]))]
        id_prompts.append(ids)

    decode = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.tokenizer)
        decode = tok.decode
    else:
        try:
            r = httpx.post(client_base + "/detokenize", json={"tokens": id_prompts[0][:4]},
                           headers=headers, timeout=30)
            if r.status_code == 200 and "prompt" in r.json():
                def decode(ids):
                    resp = httpx.post(client_base + "/detokenize", json={"tokens": ids},
                                      headers=headers, timeout=30)
                    resp.raise_for_status()
                    return resp.json()["prompt"]
        except httpx.HTTPError:
            decode = None
    out = []
    for ids, olen in zip(id_prompts, output_lens):
        prompt = decode(ids) if decode is not None else ids
        if decode is None and args.backend == "openai-chat":
            raise SystemExit("openai-chat needs text prompts: pass --tokenizer")
        out.append(RequestInput(prompt=prompt, prompt_len=len(ids), output_len=int(olen)))
    return out


# ----------------------------------------------------------------------------- client
def _request_body(model: str, req: RequestInput, args) -> dict:
    body: dict = {"model": model, "max_tokens": req.output_len, "stream": True,
                  "temperature": 0.0, "stream_options": {"include_usage": True}}
    if args.ignore_eos:
        body["ignore_eos"] = True
    if args.backend == "openai-chat":
        body["messages"] = [{"role": "user", "content": req.prompt}]
    else:
        body["prompt"] = req.prompt
    return body


class _StreamEvents:
    """Reads one streamed response into its RequestResult: TTFT at the first text piece, an
    ITL between each two, the server's token counts where it sends usage. Both clients use
    it; it starts the clock, so make it just before sending."""

    def __init__(self, req: RequestInput, chat: bool):
        self.result = RequestResult(prompt_len=req.prompt_len)
        self.chat = chat
        self.start = self.last = time.perf_counter()
        self.pieces: list = []
        self.failed = False

    def fail(self, error: str) -> None:
        self.result.error = error
        self.failed = True

    async def read(self, status: int, read_body, lines) -> None:
        """The response: its HTTP status, its (async) body reader, its (async) lines."""
        if status != 200:
            self.fail(f"HTTP {status}: {(await read_body())[:300]!r}")
            return
        async for line in lines:
            if self.feed(line):
                return

    def feed(self, line) -> bool:
        """One line (str, or bytes as aiohttp gives it); True once the stream is over:
        [DONE], or an error event."""
        line = line.strip()
        if isinstance(line, bytes):
            line = line.decode()
        if not line.startswith("data:"):
            return False
        data = line[5:].strip()
        if data == "[DONE]":
            return True
        obj = json.loads(data)
        res = self.result
        if "error" in obj:
            self.fail(str(obj["error"]))
            return True
        if obj.get("usage"):
            res.output_tokens = obj["usage"].get("completion_tokens", 0)
            res.prompt_len = obj["usage"].get("prompt_tokens", res.prompt_len)
        choices = obj.get("choices") or []
        if not choices:
            return False
        piece = (choices[0].get("delta", {}).get("content") if self.chat
                 else choices[0].get("text")) or ""
        if not piece:
            return False
        now = time.perf_counter()
        if not self.pieces:
            res.ttft = now - self.start
        else:
            res.itl.append(now - self.last)
        self.last = now
        self.pieces.append(piece)
        return False

    def finish(self) -> RequestResult:
        """The result, once the response is closed (its latency ends here)."""
        res = self.result
        if not self.failed:
            res.generated_text = "".join(self.pieces)
            res.latency = time.perf_counter() - self.start
            if res.output_tokens == 0:
                res.output_tokens = len(self.pieces)
            res.success = bool(self.pieces)
        return res


async def request_openai(client: httpx.AsyncClient, url: str, model: str, req: RequestInput,
                         args, headers: dict) -> RequestResult:
    body = _request_body(model, req, args)
    events = _StreamEvents(req, chat=args.backend == "openai-chat")
    try:
        async with client.stream("POST", url, json=body, headers=headers) as resp:
            await events.read(resp.status_code, resp.aread, resp.aiter_lines())
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        events.fail(f"{type(e).__name__}: {e}")
    return events.finish()


async def request_openai_aiohttp(session, url: str, model: str, req: RequestInput, args,
                                 headers: dict) -> RequestResult:
    """The same request through aiohttp (C HTTP parser): vLLM's benchmark client, and one
    that keeps up with ~20k streamed events/s, which httpx's pure-Python parser does not."""
    import aiohttp

    body = _request_body(model, req, args)
    events = _StreamEvents(req, chat=args.backend == "openai-chat")
    try:
        async with session.post(url, json=body, headers=headers) as resp:
            await events.read(resp.status, resp.read, resp.content)
    except (aiohttp.ClientError, json.JSONDecodeError) as e:
        events.fail(f"{type(e).__name__}: {e}")
    return events.finish()


def _default_client() -> str:
    try:
        import aiohttp  # noqa: F401
        return "aiohttp"
    except ImportError:
        return "httpx"


async def arrivals(requests: list[RequestInput], rate: float, seed: int):
    rng = random.Random(seed)
    for req in requests:
        yield req
        if rate == float("inf"):
            continue
        await asyncio.sleep(rng.expovariate(rate))


async def run(args) -> dict:
    base = (args.base_url or f"http://{args.host}:{args.port}").rstrip("/")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    endpoint = args.endpoint or ("/v1/chat/completions" if args.backend == "openai-chat"
                                 else "/v1/completions")
    model = args.model
    if model is None:
        r = httpx.get(base + "/v1/models", headers=headers, timeout=30)
        r.raise_for_status()
        model = r.json()["data"][0]["id"]
    requests = sample_random_requests(args, base, headers)
    limits = httpx.Limits(max_connections=args.max_concurrency or 100000,
                          max_keepalive_connections=args.max_concurrency or 100000)
    sem = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None
    if args.client == "aiohttp":
        import aiohttp
        client_cm = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=6 * 3600),
            connector=aiohttp.TCPConnector(limit=args.max_concurrency or 0))
        send = request_openai_aiohttp
    else:
        client_cm = httpx.AsyncClient(timeout=httpx.Timeout(6 * 3600), limits=limits)
        send = request_openai
    async with client_cm as client:
        # one warm-up request (not counted)
        warm = await send(client, base + endpoint, model,
                          RequestInput(requests[0].prompt, requests[0].prompt_len, 4),
                          args, headers)
        if not warm.success:
            raise SystemExit(f"warm-up request failed: {warm.error}")
        print(f"Traffic request rate: {args.request_rate}", flush=True)

        async def one(req):
            if sem is None:
                return await send(client, base + endpoint, model, req, args, headers)
            async with sem:
                return await send(client, base + endpoint, model, req, args, headers)

        t0 = time.perf_counter()
        cpu0 = time.process_time()
        tasks = []
        async for req in arrivals(requests, args.request_rate, args.seed):
            tasks.append(asyncio.create_task(one(req)))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - t0
        client_cpu = time.process_time() - cpu0
    res = summarize(args, model, results, duration)
    # near 1.0: the client itself was the bottleneck (one Python thread), not the server
    res["client"] = args.client
    res["client_cpu_fraction"] = client_cpu / duration
    return res


def _stats(values: list, scale: float = 1000.0) -> dict:
    if not values:
        return {"mean": 0.0, "median": 0.0, "p99": 0.0}
    a = np.asarray(values) * scale
    return {"mean": float(a.mean()), "median": float(np.median(a)),
            "p99": float(np.percentile(a, 99))}


def summarize(args, model: str, results: list[RequestResult], duration: float) -> dict:
    ok = [r for r in results if r.success]
    total_in = sum(r.prompt_len for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    tpots = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    itls = [x for r in ok for x in r.itl]
    out = {
        "date": datetime.now().strftime("%Y%m%d-%H%M%S"),
        "backend": args.backend, "model_id": model, "base_url": args.base_url,
        "num_prompts": args.num_prompts, "request_rate": args.request_rate,
        "random_input_len": args.random_input_len, "random_output_len": args.random_output_len,
        "duration": duration, "completed": len(ok), "failed": len(results) - len(ok),
        "total_input_tokens": total_in, "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration,
        "output_throughput": total_out / duration,
        "total_token_throughput": (total_in + total_out) / duration,
    }
    for name, values in (("ttft", [r.ttft for r in ok]), ("tpot", tpots), ("itl", itls),
                         ("e2el", [r.latency for r in ok])):
        for k, v in _stats(values).items():
            out[f"{k}_{name}_ms"] = v
    errors = [r.error for r in results if not r.success]
    if errors:
        out["errors"] = errors[:10]
    return out


def print_table(res: dict) -> None:
    print("{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=50, c="="))
    rows = [("Successful requests:", res["completed"]),
            ("Failed requests:", res["failed"]),
            ("Benchmark duration (s):", f"{res['duration']:.2f}"),
            ("Total input tokens:", res["total_input_tokens"]),
            ("Total generated tokens:", res["total_output_tokens"]),
            ("Request throughput (req/s):", f"{res['request_throughput']:.2f}"),
            ("Output token throughput (tok/s):", f"{res['output_throughput']:.2f}"),
            ("Total Token throughput (tok/s):", f"{res['total_token_throughput']:.2f}")]
    if "client_cpu_fraction" in res:
        rows.append((f"Client CPU busy ({res['client']}):", f"{res['client_cpu_fraction']:.2f}"))
    for label, value in rows:
        print("{:<40} {:<10}".format(label, value))
    for key, title in (("ttft", "Time to First Token"), ("tpot", "Time per Output Token (excl. 1st token)"),
                       ("itl", "Inter-token Latency"), ("e2el", "End-to-end Latency")):
        print("{s:{c}^{n}}".format(s=title, n=50, c="-"))
        for stat, label in (("mean", "Mean"), ("median", "Median"), ("p99", "P99")):
            print("{:<40} {:<10.2f}".format(f"{label} {key.upper()} (ms):",
                                            res[f"{stat}_{key}_ms"]))
    print("=" * 50)
    for e in res.get("errors", [])[:3]:
        print("error:", e)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="openai", choices=["openai", "openai-chat", "vllm"])
    p.add_argument("--base-url", default=None, help="Server base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--endpoint", default=None, help="Default /v1/completions "
                   "(/v1/chat/completions for openai-chat)")
    p.add_argument("--model", default=None, help="Default: the first model of /v1/models")
    p.add_argument("--tokenizer", default=None, help="Local HF tokenizer for the random prompts")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    p.add_argument("--dataset-name", default="random", choices=["random"])
    p.add_argument("--random-input-len", type=int, default=1024)
    p.add_argument("--random-output-len", type=int, default=128)
    p.add_argument("--random-range-ratio", type=float, default=1.0)
    p.add_argument("--random-vocab-size", type=int, default=32000)
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--request-rate", type=float, default=float("inf"),
                   help="Requests/s (Poisson arrivals); inf sends all at once")
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--ignore-eos", action="store_true",
                   help="Ask for exactly --random-output-len tokens (vLLM extra)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--client", default=_default_client(), choices=["aiohttp", "httpx"],
                   help="HTTP client library (default aiohttp when installed, as vLLM's "
                        "benchmark; httpx parses in pure Python and saturates one core first)")
    p.add_argument("--save-result", action="store_true", help="Write the JSON result")
    p.add_argument("--result-dir", default="benchmarks/results")
    p.add_argument("--result-filename", default=None)
    args = p.parse_args(argv)
    if args.backend == "vllm":
        args.backend = "openai"
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    res = asyncio.run(run(args))
    print_table(res)
    if args.save_result or args.result_filename:
        name = args.result_filename or (
            f"{args.backend}-{args.request_rate}qps-{res['model_id'].replace('/', '_')}-"
            f"{res['date']}.json")
        write_json(os.path.join(args.result_dir, name), res)
    return res


if __name__ == "__main__":
    sys.exit(0 if main()["completed"] else 1)
