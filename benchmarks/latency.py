"""Latency of one batch end to end, vLLM's `benchmark_latency` flags, with HF transformers
(greedy `generate`) as the baseline in the same run.

    python benchmarks/latency.py --model benchmarks/configs/llama3-8b --load-format dummy \
        --dtype bfloat16 --input-len 128 --output-len 128 --batch-size 1

Reports the mean / percentiles of the batch latency and the per-output-token latency
(batch latency / output_len). Prints a table and writes JSON (--output-json).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import describe_device, print_table, write_record  # noqa: E402
from throughput import add_model_args, load_hf_model, model_and_prompts  # noqa: E402


def _stats(lat: list, output_len: int) -> dict:
    a = np.asarray(lat)
    return dict(latencies_s=a.tolist(), avg_latency_s=float(a.mean()),
                p50_latency_s=float(np.percentile(a, 50)), p90_latency_s=float(np.percentile(a, 90)),
                ms_per_token=float(a.mean() / output_len * 1e3))


def run_llmcore(args, prompts) -> dict:
    from llmcore import LLM, SamplingParams
    kwargs = dict(model=args.model, load_format=args.load_format, dtype=args.dtype, seed=args.seed,
                  max_num_seqs=max(args.batch_size, 1), enforce_eager=args.enforce_eager,
                  device=args.device, skip_tokenizer_init=True)
    if args.max_model_len:
        kwargs["max_model_len"] = args.max_model_len
    if args.num_gpu_blocks_override:
        kwargs["num_gpu_blocks_override"] = args.num_gpu_blocks_override
    t0 = time.perf_counter()
    llm = LLM(**kwargs)
    init_s = time.perf_counter() - t0
    params = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=args.output_len)
    reqs = [{"prompt_token_ids": p} for p in prompts]

    def once():
        if args.device_resolved == "cuda":
            torch.cuda.synchronize()
        s = time.perf_counter()
        llm.generate(reqs, params, use_tqdm=False)
        if args.device_resolved == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - s

    for _ in range(args.num_iters_warmup):
        once()
    lat = [once() for _ in range(args.num_iters)]
    runner = llm.llm_engine.runner
    gr = getattr(runner, "graph_runner", None)
    info = dict(init_s=init_s, cuda_graphs=gr is not None,
                graph_capture_s=getattr(gr, "capture_time_s", None),
                kv_blocks=llm.llm_engine.num_device_blocks)
    del llm
    gc.collect()
    if args.device_resolved == "cuda":
        torch.cuda.empty_cache()
    return dict(**_stats(lat, args.output_len), **info)


@torch.inference_mode()
def run_hf(args, prompts, model_config) -> dict:
    model = load_hf_model(args, model_config)
    dev = args.device_resolved
    batch = torch.tensor(prompts, device=dev)
    kw = dict(do_sample=False, max_new_tokens=args.output_len, min_new_tokens=args.output_len,
              use_cache=True, pad_token_id=0, attention_mask=torch.ones_like(batch))

    def once():
        if dev == "cuda":
            torch.cuda.synchronize()
        s = time.perf_counter()
        model.generate(batch, **kw)
        if dev == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - s

    model.generate(batch, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})
    lat = [once() for _ in range(args.hf_num_iters)]
    del model
    gc.collect()
    if dev == "cuda":
        torch.cuda.empty_cache()
    return _stats(lat, args.output_len)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-iters-warmup", type=int, default=2)
    p.add_argument("--num-iters", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--num-gpu-blocks-override", type=int, default=None)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--skip-hf", action="store_true", help="Skip the HF transformers baseline.")
    p.add_argument("--hf-num-iters", type=int, default=2)
    p.add_argument("--output-json", default="benchmarks/results/latency.json")
    args = p.parse_args(argv)
    mc, prompts = model_and_prompts(args, args.batch_size)
    results = {"llmcore": run_llmcore(args, prompts)}
    if not args.skip_hf:
        results["hf_transformers"] = run_hf(args, prompts, mc)
        results["speedup_vs_hf"] = (results["hf_transformers"]["avg_latency_s"]
                                    / results["llmcore"]["avg_latency_s"])
    dev = describe_device(args.device_resolved)
    print(f"\nlatency: batch {args.batch_size}, {args.input_len} in / {args.output_len} out, "
          f"model={args.model} dtype={args.dtype} device={dev} "
          f"enforce_eager={args.enforce_eager}")
    print_table([("engine", "<18"), ("avg s", ">9.3f"), ("p50 s", ">9.3f"), ("p90 s", ">9.3f"),
                 ("ms/token", ">10.2f"), ("tok/s (bs)", ">12.1f")],
                [(name, r["avg_latency_s"], r["p50_latency_s"], r["p90_latency_s"], r["ms_per_token"],
                  args.batch_size * 1e3 / r["ms_per_token"])
                 for name, r in results.items() if name in ("llmcore", "hf_transformers")])
    if "speedup_vs_hf" in results:
        print(f"llmcore speedup vs HF (latency): {results['speedup_vs_hf']:.2f}x")
    write_record(args.output_json, "latency", dev, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
