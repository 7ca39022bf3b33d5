"""Structured-output throughput and compile latency, per backend.

    python benchmarks/structured_output.py                       # SmolLM2, 64 requests
    python benchmarks/structured_output.py --device cuda --num-prompts 64

For each backend (xgrammar, outlines, lm-format-enforcer) the same --num-prompts requests
run once with every request under a typical JSON schema (a user record: strings, an
integer with bounds, an enum, a boolean, a nested object and an array), then once
unconstrained with each request's max_tokens set to the token count its constrained run
produced (ignore_eos): both runs decode exactly the same number of tokens per request,
so the ratio of their times is the cost of guided decoding (mask filling on the host,
the masked fill on the device, synchronous steps).

TTFT: one request with max_tokens=1 under a schema never seen before (compiled on
arrival) and under the same schema again (cached), minus the same request unconstrained;
medians over --ttft-repeats. Prints a table and writes JSON (--output-json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import describe_device, print_table, write_record  # noqa: E402

BACKENDS = ("xgrammar", "outlines", "lm-format-enforcer")

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "maxLength": 32},
        "role": {"enum": ["admin", "user", "guest"]},
        "active": {"type": "boolean"},
        "address": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 20},
            "zip": {"type": "string", "maxLength": 10}}, "required": ["city", "zip"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    },
    "required": ["name", "age", "email", "role", "active", "address", "tags"],
}


def prompts(n: int) -> list:
    topics = ["a software engineer", "a teacher", "a retired pilot", "a student", "a chef",
              "a doctor", "an artist", "a farmer"]
    return [f"Write the user profile of {topics[i % len(topics)]} number {i} as JSON:\n"
            for i in range(n)]


def guided(schema: dict, backend: str):
    from llmcore import GuidedDecodingParams
    return GuidedDecodingParams(json=schema, backend=backend)


def timed_generate(llm, ps, params, profile_to: str = "") -> tuple:
    """(seconds, outputs); with profile_to, the call runs under cProfile (slower: compare
    only profiled runs with each other) and its top functions are written there."""
    prof = None
    if profile_to:
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
    start = time.perf_counter()
    outs = llm.generate(ps, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    if prof is not None:
        prof.disable()
        import pstats
        prof.dump_stats(os.path.splitext(profile_to)[0] + ".prof")   # all of it, for pstats
        with open(profile_to, "w") as f:
            f.write(f"{elapsed:.3f} s under cProfile\n")
            for key in ("tottime", "cumulative"):
                pstats.Stats(prof, stream=f).sort_stats(key).print_stats(45)
    return elapsed, outs


def run_backend(llm, backend: str, args) -> dict:
    from llmcore import SamplingParams
    ps = prompts(args.num_prompts)
    # warm-up: builds the backend's vocabulary tables and compiles the schema (cached after)
    t0 = time.perf_counter()
    llm.generate(ps[:1], SamplingParams(temperature=0, max_tokens=2,
                                        guided_decoding=guided(SCHEMA, backend)), use_tqdm=False)
    init_s = time.perf_counter() - t0
    seed = (lambda i: i) if args.seeded else (lambda i: None)
    cons = [SamplingParams(temperature=args.temperature, seed=seed(i), max_tokens=args.max_tokens,
                           guided_decoding=guided(SCHEMA, backend)) for i in range(len(ps))]
    t_cons, outs = timed_generate(llm, ps, cons)
    lens = [len(o.outputs[0].token_ids) for o in outs]
    valid = 0
    for o in outs:
        try:
            json.loads(o.outputs[0].text)
            valid += 1
        except ValueError:
            pass
    free = [SamplingParams(temperature=args.temperature, seed=seed(i), max_tokens=n, ignore_eos=True)
            for i, n in enumerate(lens)]
    t_free, fouts = timed_generate(llm, ps, free)
    assert [len(o.outputs[0].token_ids) for o in fouts] == lens
    if args.profile_dir:   # the same two runs again, under cProfile (not in the figures)
        os.makedirs(args.profile_dir, exist_ok=True)
        timed_generate(llm, ps, cons, os.path.join(args.profile_dir, f"{backend}_guided.txt"))
        timed_generate(llm, ps, free, os.path.join(args.profile_dir, f"{backend}_free.txt"))
    tokens = sum(lens)
    ttft = measure_ttft(llm, backend, args)
    return dict(backend=backend, backend_init_s=init_s, output_tokens=tokens,
                constrained_s=t_cons, unconstrained_s=t_free,
                constrained_tok_s=tokens / t_cons, unconstrained_tok_s=tokens / t_free,
                ratio=t_free / t_cons, valid_json=valid, num_requests=len(ps),
                finished_stop=sum(o.outputs[0].finish_reason == "stop" for o in outs), **ttft)


def measure_ttft(llm, backend: str, args) -> dict:
    from llmcore import SamplingParams
    p = ["Write a JSON object:\n"]
    one = dict(temperature=0, max_tokens=1)
    base, new, cached = [], [], []
    for i in range(args.ttft_repeats):
        # a schema nobody asked for before: an extra property with a fresh name
        schema = json.loads(json.dumps(SCHEMA))
        schema["properties"][f"field_{backend}_{i}_{time.time_ns()}"] = {"type": "integer"}
        base.append(timed_generate(llm, p, SamplingParams(**one))[0])
        new.append(timed_generate(llm, p, SamplingParams(
            **one, guided_decoding=guided(schema, backend)))[0])
        cached.append(timed_generate(llm, p, SamplingParams(
            **one, guided_decoding=guided(schema, backend)))[0])
    b = statistics.median(base)
    return dict(ttft_unconstrained_ms=1e3 * b,
                ttft_added_new_schema_ms=1e3 * (statistics.median(new) - b),
                ttft_added_cached_schema_ms=1e3 * (statistics.median(cached) - b))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--device", default="auto")
    p.add_argument("--load-format", default=None,
                   help="dummy: random weights (the JSON is then valid but not meaningful)")
    p.add_argument("--tokenizer", default=None, help="A tokenizer folder (with --load-format dummy)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=160)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seeded", action="store_true",
                   help="a seed per request (seeded rows read the device on the host, so a "
                        "GPU samples guided steps after the mask instead of queueing behind it)")
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--ttft-repeats", type=int, default=3)
    p.add_argument("--guided-decoding-overlap", action="store_true",
                   help="The engine flag: sampling queued behind a device-side mask wait (GPUs)")
    p.add_argument("--profile-dir", default="",
                   help="Also run each backend's two runs under cProfile; top functions there")
    p.add_argument("--output-json", default="benchmarks/results/structured_output.json")
    args = p.parse_args(argv)
    from llmcore import LLM
    kwargs = dict(model=args.model, device=args.device, dtype=args.dtype,
                  max_model_len=args.max_model_len, max_num_seqs=max(args.num_prompts, 1))
    if args.guided_decoding_overlap:
        kwargs["guided_decoding_overlap"] = True
    if args.async_scheduling is not None:
        kwargs["async_scheduling"] = args.async_scheduling
    if args.load_format is not None:   # dummy: random weights of the model's shapes (no GPU
        kwargs["load_format"] = args.load_format  # machine has SmolLM2's checkpoint)
    if args.tokenizer is not None:
        kwargs["tokenizer"] = args.tokenizer
    llm = LLM(**kwargs)
    device = describe_device(str(llm.llm_engine.device.type))
    from llmcore import SamplingParams
    llm.generate(prompts(2), SamplingParams(max_tokens=4), use_tqdm=False)  # warm-up
    results = [run_backend(llm, b, args) for b in args.backends]
    print(f"\nstructured output: {args.num_prompts} requests, every one under a JSON schema vs "
          f"unconstrained with the same token counts; model={args.model} device={device}")
    print_table([("backend", "<20"), ("tokens", ">8"), ("guided tok/s", ">14.1f"),
                 ("free tok/s", ">12.1f"), ("ratio", ">8.3f"), ("valid", ">7"), ("init s", ">8.2f"),
                 ("TTFT+ new ms", ">14.1f"), ("TTFT+ cached ms", ">17.1f")],
                [(r["backend"], r["output_tokens"], r["constrained_tok_s"], r["unconstrained_tok_s"],
                  r["ratio"], f"{r['valid_json']:>4}/{r['num_requests']:<2}", r["backend_init_s"],
                  r["ttft_added_new_schema_ms"], r["ttft_added_cached_schema_ms"]) for r in results])
    write_record(args.output_json, "structured_output", device, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
