"""Pipeline-parallel micro-batches: output tok/s of the engine core with --pipeline-parallel-size
M (mp executor; gloo on the CPU) with M micro-batches in flight (the default) vs one step
at a time (SchedulerConfig.num_micro_batches = 1, the engine before micro-batches), on the
same random prompts, greedy; the tokens of every pass are compared. Both engines are up at
once and their passes alternate, so that a drift in a shared machine's load hits both.

    python benchmarks/pipeline_micro_batches.py     # SmolLM2-135M's shapes, dummy weights
    python benchmarks/pipeline_micro_batches.py --pp 2 --num-prompts 32 --input-len 32 \
        --output-len 64 --repeats 3

On the CPU each stage's process gets cpu_count / world_size threads (rank_worker.py).
Prints a table and writes JSON (--output-json).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from report import describe_device, print_table, write_record


def make_core(args, micro_batches):
    """An engine core with PP = args.pp; micro_batches: None = the pp size."""
    from llmcore.config import EngineArgs
    from llmcore.engine.core import EngineCore

    config = EngineArgs(model=args.model, load_format=args.load_format, dtype=args.dtype,
                        device=args.device, pipeline_parallel_size=args.pp,
                        max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len,
                        cpu_kv_cache_space=args.cpu_kv_cache_space, skip_tokenizer_init=True,
                        seed=0).create_engine_config()
    config.scheduler_config.num_micro_batches = micro_batches
    return EngineCore(config, eos_token_id=None)


def generate(core, prompts: list, max_tokens: int, tag: str) -> dict:
    """Greedy, all prompts at once; wall time of the whole pass."""
    from llmcore.engine.core_types import EngineCoreRequest
    from llmcore.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    for i, p in enumerate(prompts):
        core.add_request(EngineCoreRequest(f"{tag}{i}", p, params, max_tokens, time.time()))
    tokens: dict = {f"{tag}{i}": [] for i in range(len(prompts))}
    steps = 0
    start = time.perf_counter()
    while core.has_unfinished_requests():
        for o in core.step().outputs:
            tokens[o.request_id] += o.new_token_ids
        steps += 1
    elapsed = time.perf_counter() - start
    n_out = sum(len(t) for t in tokens.values())
    return dict(elapsed_s=elapsed, engine_steps=steps, output_tokens=n_out,
                output_tok_s=n_out / elapsed,
                tokens=[tokens[f"{tag}{i}"] for i in range(len(prompts))])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    p.add_argument("--model", default=os.path.join(here, "configs", "smollm2-135m"))
    p.add_argument("--load-format", default="dummy")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--pp", type=int, default=2)
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-model-len", type=int, default=512)
    p.add_argument("--cpu-kv-cache-space", type=float, default=0.25)
    p.add_argument("--repeats", type=int, default=3,
                   help="passes of each mode, alternating (a shared machine's load drifts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-json", default="benchmarks/results/pipeline_micro_batches.json")
    args = p.parse_args()
    if args.pp < 2:
        p.error("--pp must be >= 2 (one stage has no micro-batches)")

    # both engines up at once (the idle one's workers wait on their pipes)
    cores = {"1": make_core(args, 1), "M": make_core(args, None)}
    try:
        m = cores["M"].scheduler.config.num_micro_batches
        rng = np.random.default_rng(args.seed)
        vocab = cores["1"].config.model_config.vocab_size
        prompts = [rng.integers(100, vocab - 1, size=args.input_len).tolist()
                   for _ in range(args.num_prompts)]
        for core in cores.values():
            generate(core, prompts[:2], 4, "warm")   # each stage's first steps
        runs: dict = {"1": [], "M": []}
        for r in range(args.repeats):
            for key in (("1", "M") if r % 2 == 0 else ("M", "1")):
                runs[key].append(generate(cores[key], prompts, args.output_len, f"r{r}_"))
    finally:
        for core in cores.values():
            core.shutdown()
    same = all(x["tokens"] == runs["1"][0]["tokens"] for x in runs["1"] + runs["M"])
    for rs in runs.values():
        for x in rs:
            x.pop("tokens")

    def summary(rs: list, micro: int) -> dict:
        tps = sorted(x["output_tok_s"] for x in rs)
        return dict(micro_batches=micro, engine_steps=rs[0]["engine_steps"],
                    best_tok_s=tps[-1], median_tok_s=tps[len(tps) // 2], runs=rs)

    one, many = summary(runs["1"], 1), summary(runs["M"], m)
    ratio = many["best_tok_s"] / one["best_tok_s"]
    ratio_median = many["median_tok_s"] / one["median_tok_s"]
    print(f"PP={args.pp}, {args.num_prompts} prompts x {args.input_len} in / {args.output_len} "
          f"out, {describe_device(args.device)}, {args.repeats} passes each (alternating); "
          f"same greedy tokens: {same}")
    print_table([("micro-batches", "<15"), ("steps", ">7d"), ("best tok/s", ">12.1f"),
                 ("median tok/s", ">14.1f"), ("passes tok/s", ">24")],
                [(str(r["micro_batches"]), r["engine_steps"], r["best_tok_s"], r["median_tok_s"],
                  " ".join(f"{x['output_tok_s']:.0f}" for x in r["runs"])) for r in (one, many)])
    print(f"ratio (M={m} / M=1): best {ratio:.2f}x, median {ratio_median:.2f}x")
    write_record(args.output_json, "pipeline_micro_batches", describe_device(args.device), args,
                 dict(one_micro_batch=one, micro_batches=many, ratio_best=ratio,
                      ratio_median=ratio_median, same_tokens=same))


if __name__ == "__main__":
    torch.set_num_threads(1)   # the engine core's process: the stages have the cores
    main()
