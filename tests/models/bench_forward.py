"""Forward throughput of the default model (SmolLM2-135M config, dummy weights, fp32 CPU):
a 64 x 128-token prefill in one step and batch-64 decode steps, vs the GEMM-only time of
the same matmuls (the machine's ceiling for this model). Run: python bench_forward.py"""

from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))
sys.path.insert(0, os.path.dirname(__file__))

from llmcore.config import EngineArgs  # noqa: E402
from llmcore.model_loader import get_model, load_model_config  # noqa: E402
from paged_kv_helper import PagedRunner  # noqa: E402


def gemm_time(model, T: int, rows: int, reps: int = 2) -> float:
    """Time of the model's GEMMs alone: every linear layer on T tokens + the LM head on
    `rows` rows (the machine's ceiling for this step)."""
    # the engine's own GEMM path (oneDNN-packed weights on the CPU), without the rest
    lins = [m for m in model.modules() if hasattr(m, "quant_method")]
    xs = {m.input_size: torch.randn(T, m.input_size) for m in lins}
    h = torch.randn(rows, model.lm_head.weight.shape[1])
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        for m in lins:
            m(xs[m.input_size])
        model.compute_logits(h)
        best = min(best, time.perf_counter() - t)
    return best


def main(batch=64, prompt_len=128, decode_steps=8):
    mc = load_model_config(EngineArgs(load_format="dummy"), "cpu")
    model = get_model(mc, "cpu")
    flops_tok = 2 * sum(m.weight.numel() for m in model.modules() if hasattr(m, "quant_method"))
    runner = PagedRunner(model, num_blocks=batch * (prompt_len + decode_steps + 16) // 16 + 8)
    prompts = [torch.randint(0, mc.vocab_size, (prompt_len,)).tolist() for _ in range(batch)]
    # warm-up on a small batch
    runner.step([("w", prompts[0][:16])])
    runner.free_seq("w")
    g = gemm_time(model, batch * prompt_len, batch)
    t = time.perf_counter()
    logits = runner.step([(i, p) for i, p in enumerate(prompts)])
    tp = time.perf_counter() - t
    T = batch * prompt_len
    print(f"prefill {batch}x{prompt_len}: {tp:.2f}s  {T / tp:.0f} tok/s  "
          f"{flops_tok * T / tp / 1e9:.1f} GFLOP/s linear  (GEMM-only {g:.2f}s "
          f"= {flops_tok * T / g / 1e9:.1f} GFLOP/s; efficiency {g / tp:.0%})")
    times = []
    for _ in range(decode_steps):
        nxt = logits.argmax(-1).tolist()
        t = time.perf_counter()
        logits = runner.step([], [(i, nxt[i]) for i in range(batch)])
        times.append(time.perf_counter() - t)
    gd = gemm_time(model, batch, batch, reps=3)
    td = sorted(times)[len(times) // 2]
    print(f"decode batch {batch} (ctx {prompt_len}..{prompt_len + decode_steps}): median "
          f"{td * 1e3:.1f} ms/step  {batch / td:.0f} tok/s  (GEMM-only {gd * 1e3:.1f} ms; "
          f"efficiency {gd / td:.0%})")
    total, ceiling = tp + sum(times), g + gd * decode_steps
    print(f"forward total {batch}x{prompt_len} in / {decode_steps} out: {total:.1f}s vs GEMM-only "
          f"{ceiling:.1f}s: {ceiling / total:.0%} of the GEMM ceiling")


if __name__ == "__main__":
    # LLMCORE_BENCH_THREADS=1: one thread, robust against other processes on the machine
    if os.environ.get("LLMCORE_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["LLMCORE_BENCH_THREADS"]))
    torch.manual_seed(0)
    with torch.inference_mode():
        main(*[int(a) for a in sys.argv[1:]])
