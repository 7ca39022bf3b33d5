"""Benchmark of the C++ scheduler (llmcore._core): time per schedule() + update().

Workload: 256 running sequences of ~2k tokens (decoding), 1000 waiting requests,
block size 16, prefix caching on (prompts share a system prefix), a device
pool large enough that the running sequences never get preempted.

    python benchmarks/bench_scheduler.py [--steps 2000] [--output-json PATH]
"""

import argparse
import os
import platform
import time

import numpy as np

from llmcore._core import Scheduler, SchedulerConfig

from report import write_json

TARGET_US = 100.0


def build(args):
    cfg = SchedulerConfig()
    cfg.block_size = args.block_size
    cfg.max_model_len = args.prompt_len + args.prompt_jitter + args.warmup + args.steps + 64
    blocks_per_seq = -(-cfg.max_model_len // cfg.block_size)
    cfg.num_device_blocks = (args.running + 8) * blocks_per_seq
    cfg.num_cpu_blocks = 0
    cfg.max_num_seqs = args.running
    cfg.max_num_batched_tokens = 8192
    cfg.enable_chunked_prefill = True
    cfg.enable_prefix_caching = True
    s = Scheduler(cfg)
    rng = np.random.default_rng(0)
    system = rng.integers(0, 32000, args.shared_prefix).astype(np.int32)

    def prompt():
        n = args.prompt_len + int(rng.integers(-args.prompt_jitter, args.prompt_jitter + 1))
        tail = rng.integers(0, 32000, n - len(system)).astype(np.int32)
        return np.concatenate([system, tail])

    for i in range(args.running):
        s.add_request(i, i, prompt(), arrival_time=float(i))
    # Prefill everything (chunked), then let every sequence decode.
    while True:
        out = s.schedule()
        sampled = out.seq_ids[out.do_sample]
        s.update(sampled, np.ones(len(sampled), np.int32))
        if out.num_prefill_seqs == 0 and out.num_seqs == args.running:
            break
    for i in range(args.waiting):
        rid = args.running + i
        s.add_request(rid, rid, prompt(), arrival_time=float(rid))
    return cfg, s


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--running", type=int, default=256)
    ap.add_argument("--waiting", type=int, default=1000)
    ap.add_argument("--prompt-len", type=int, default=2048)
    ap.add_argument("--prompt-jitter", type=int, default=64)
    ap.add_argument("--shared-prefix", type=int, default=512)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--output-json", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", "bench_scheduler.json"))
    args = ap.parse_args()

    cfg, s = build(args)
    seq_ids = np.arange(args.running, dtype=np.int64)
    tokens = np.full(args.running, 7, dtype=np.int32)

    for _ in range(args.warmup):
        out = s.schedule()
        s.update(seq_ids, tokens)
    assert out.num_seqs == args.running and out.num_prefill_seqs == 0

    sched_ns = np.empty(args.steps, np.int64)
    total_ns = np.empty(args.steps, np.int64)
    clock = time.perf_counter_ns
    for i in range(args.steps):
        t0 = clock()
        out = s.schedule()
        t1 = clock()
        s.update(seq_ids, tokens)
        t2 = clock()
        sched_ns[i] = t1 - t0
        total_ns[i] = t2 - t0
        del out
    out = s.schedule()
    assert out.num_seqs == args.running, "running sequences must keep running"
    assert s.num_preemptions() == 0
    assert s.num_waiting() == args.waiting

    def stats(ns):
        us = ns / 1000.0
        return {"mean_us": float(us.mean()), "p50_us": float(np.percentile(us, 50)),
                "p99_us": float(np.percentile(us, 99)), "max_us": float(us.max())}

    total = stats(total_ns)
    sched = stats(sched_ns)
    upd = stats(total_ns - sched_ns)
    print(f"scheduler benchmark: {args.running} running seqs (~{args.prompt_len} tokens), "
          f"{args.waiting} waiting, block {cfg.block_size}, prefix caching on, "
          f"{args.steps} steps")
    print(f"{'':22s}{'mean':>10s}{'p50':>10s}{'p99':>10s}{'max':>10s}")
    for name, st in (("schedule()+update()", total), ("  schedule()", sched), ("  update()", upd)):
        print(f"{name:22s}" + "".join(f"{st[k]:10.1f}" for k in ("mean_us", "p50_us", "p99_us", "max_us")))
    ok = total["mean_us"] < TARGET_US
    print(f"target: < {TARGET_US:.0f} us per step (mean) -> {'PASS' if ok else 'FAIL'}; "
          f"prefix cache hit rate {s.prefix_cache_hit_rate():.3f}, "
          f"device usage {s.device_usage():.3f}")

    result = {
        "benchmark": "scheduler_step",
        "config": {k: getattr(args, k) for k in ("running", "waiting", "prompt_len", "prompt_jitter",
                                                "shared_prefix", "block_size", "warmup", "steps")},
        "num_device_blocks": cfg.num_device_blocks,
        "schedule_plus_update": total,
        "schedule": sched,
        "update": upd,
        "target_us": TARGET_US,
        "pass": ok,
        "prefix_cache_hit_rate": s.prefix_cache_hit_rate(),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpu_count": os.cpu_count()},
    }
    write_json(args.output_json, result)


if __name__ == "__main__":
    main()
