"""Pipeline-parallel micro-batches: output tok/s of the engine core with --pipeline-parallel-size
M (mp executor; gloo on the CPU) with M micro-batches in flight (the default) vs one step
at a time (SchedulerConfig.num_micro_batches = 1, the engine before micro-batches), on the
same random prompts, greedy; the tokens of both runs are compared.

    python benchmarks/pipeline_micro_batches.py                  # SmolLM2-135M's shapes, dummy weights
    python benchmarks/pipeline_micro_batches.py --pp 2 --num-prompts 32 --input-len 32 --output-len 64

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


def run(args, micro_batches) -> dict:
    """One engine, one pass over the prompts. micro_batches: None = the pp size."""
    from llmcore.config import EngineArgs
    from llmcore.engine.core import EngineCore
    from llmcore.engine.core_types import EngineCoreRequest
    from llmcore.sampling_params import SamplingParams

    config = EngineArgs(model=args.model, load_format=args.load_format, dtype=args.dtype,
                        device=args.device, pipeline_parallel_size=args.pp,
                        max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len,
                        cpu_kv_cache_space=args.cpu_kv_cache_space, skip_tokenizer_init=True,
                        seed=0).create_engine_config()
    config.scheduler_config.num_micro_batches = micro_batches
    core = EngineCore(config, eos_token_id=None)
    try:
        rng = np.random.default_rng(args.seed)
        vocab = config.model_config.vocab_size
        prompts = [rng.integers(100, vocab - 1, size=args.input_len).tolist()
                   for _ in range(args.num_prompts)]

        def generate(prompts: list, max_tokens: int, tag: str) -> tuple:
            params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
            for i, p in enumerate(prompts):
                core.add_request(EngineCoreRequest(f"{tag}{i}", p, params, max_tokens,
                                                   time.time()))
            tokens: dict = {f"{tag}{i}": [] for i in range(len(prompts))}
            steps = 0
            start = time.perf_counter()
            while core.has_unfinished_requests():
                for o in core.step().outputs:
                    tokens[o.request_id] += o.new_token_ids
                steps += 1
            return time.perf_counter() - start, steps, [tokens[f"{tag}{i}"]
                                                        for i in range(len(prompts))]

        generate(prompts[:2], 4, "warm")   # first steps of each stage (allocations)
        elapsed, steps, tokens = generate(prompts, args.output_len, "r")
        m = core.scheduler.config.num_micro_batches
    finally:
        core.shutdown()
    n_out = sum(len(t) for t in tokens)
    return dict(micro_batches=m, elapsed_s=elapsed, engine_steps=steps,
                output_tokens=n_out, output_tok_s=n_out / elapsed, tokens=tokens)


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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-json", default="benchmarks/results/pipeline_micro_batches.json")
    args = p.parse_args()
    if args.pp < 2:
        p.error("--pp must be >= 2 (one stage has no micro-batches)")

    one = run(args, 1)
    many = run(args, None)
    same = one.pop("tokens") == many.pop("tokens")
    ratio = many["output_tok_s"] / one["output_tok_s"]
    print(f"PP={args.pp}, {args.num_prompts} prompts x {args.input_len} in / {args.output_len} "
          f"out, {describe_device(args.device)}; same greedy tokens: {same}")
    print_table([("micro-batches", "<15"), ("steps", ">7d"), ("seconds", ">9.2f"),
                 ("output tok/s", ">14.1f")],
                [(str(r["micro_batches"]), r["engine_steps"], r["elapsed_s"], r["output_tok_s"])
                 for r in (one, many)])
    print(f"ratio (M={many['micro_batches']} / M=1): {ratio:.2f}x")
    write_record(args.output_json, "pipeline_micro_batches", describe_device(args.device), args,
                 dict(one_micro_batch=one, micro_batches=many, ratio=ratio, same_tokens=same))


if __name__ == "__main__":
    torch.set_num_threads(1)   # the engine core's process: the stages have the cores
    main()
