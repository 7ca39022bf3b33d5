"""Where a batched decode step's time goes (GPU): the whole engine step vs the CUDA-graph
replay of the model vs logits + sampling, at a steady decode batch (e.g. 256 sequences at
context ~1000, the middle of a 1000-in/1000-out run), plus the top kernels of a few steps.

    python benchmarks/step_profile.py --model benchmarks/configs/llama3-8b --batch-size 256 \
        --context 1000

Prints a table and writes JSON (--output-json).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="benchmarks/configs/llama3-8b")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--context", type=int, default=1000)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--kv-cache-dtype", default="auto")
    p.add_argument("--profile", action="store_true", help="torch profiler over 3 steps")
    p.add_argument("--output-json", default=None)
    a = p.parse_args()
    from llmcore import LLM, SamplingParams
    llm = LLM(model=a.model, load_format="dummy", dtype=a.dtype, max_num_seqs=a.batch_size,
              skip_tokenizer_init=True, enforce_eager=a.enforce_eager, kv_cache_dtype=a.kv_cache_dtype)
    eng = llm.llm_engine
    cuda = eng.device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    rng = np.random.default_rng(0)
    vocab = eng.model_config.vocab_size
    sp = SamplingParams(temperature=a.temperature, ignore_eos=True,
                        max_tokens=a.steps * 3 + 200)
    for i in range(a.batch_size):
        eng.add_request(str(i), {"prompt_token_ids": rng.integers(100, vocab - 1, a.context).tolist()},
                        sp)
    t = time.perf_counter()
    while eng.scheduler.num_waiting() > 0:
        eng.step()
    for _ in range(3):
        eng.step()
    sync()
    res = {"batch_size": a.batch_size, "context": a.context, "kv_cache_dtype": a.kv_cache_dtype,
           "prefill_s": round(time.perf_counter() - t, 3)}

    def timed(fn, n):
        sync()
        s = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        return (time.perf_counter() - s) / n * 1e3

    res["engine_step_ms"] = timed(eng.step, a.steps)
    gr = eng.runner.graph_runner
    if gr is not None:
        bs = gr.padded_size(a.batch_size)
        res["graph_replay_ms"] = timed(gr.graphs[bs].replay, a.steps)
        h = gr.outputs[bs][:a.batch_size]
        with torch.inference_mode():
            res["logits_ms"] = timed(lambda: eng.runner.model.compute_logits(h).float(), a.steps)
            logits = eng.runner.model.compute_logits(h).float()
            slots = torch.tensor([s.slot for _, s in eng._seqs.values()][:a.batch_size],
                                 dtype=torch.int64, device=logits.device)
            res["sampler_ms"] = timed(lambda: eng.sampler.sample(logits, slots, eng.sampling_state),
                                      a.steps)
    res["tokens_per_s"] = a.batch_size / res["engine_step_ms"] * 1e3
    for k, v in res.items():
        print(f"{k:20s} {v:10.3f}" if isinstance(v, float) else f"{k:20s} {v}")
    if a.profile and cuda:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                eng.step()
            sync()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    for rid in list(eng.requests):
        eng.abort_request(rid)
    if a.output_json:
        with open(a.output_json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
