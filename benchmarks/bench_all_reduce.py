"""Custom all-reduce vs NCCL latency on the GPUs of one host (the multi-GPU runs issue).

One process per GPU. For each message size (4 KB .. 8 MB) every path - the custom kernel forced
to one-shot, forced to two-shot, and NCCL - is captured `--reps` times back to back in one CUDA
graph, the graph replayed `--iters` times between CUDA events: latency = elapsed / (iters x reps),
the slowest rank's. Graphs are how decode steps run, and they hide the Python launch cost.
Each size is also checked once: the custom result must match NCCL's. Prints a table, writes JSON.

  python benchmarks/bench_all_reduce.py [--world N] [--dtype bfloat16] [--out PATH]

Needs at least 2 GPUs; with fewer it says so and exits 0. NVLink multicast stays off
(NCCL_NVLS_ENABLE=0, set by init_distributed).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import traceback

import torch

SIZES = [4 << 10, 8 << 10, 16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 512 << 10,
         1 << 20, 2 << 20, 4 << 20, 8 << 20]
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _time_graph(fn, reps: int, iters: int, warmup: int, cpu_group) -> float:
    """Microseconds per call of fn, captured reps times in one graph."""
    import torch.distributed as dist

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):    # eager warm-up (NCCL communicator, allocator)
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    for _ in range(warmup):
        graph.replay()
    torch.cuda.synchronize()
    dist.barrier(group=cpu_group)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    end.synchronize()
    us = start.elapsed_time(end) * 1e3 / (iters * reps)
    del graph
    return us


def _rank_main(rank: int, world: int, init_method: str, args, conn) -> None:
    try:
        import torch.distributed as dist

        from llmcore.distributed import init_distributed, setup_custom_all_reduce
        from llmcore.ops.custom_all_reduce import choose_algo

        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
        init_distributed(rank, world, init_method, "nccl", device=device)
        cpu_group = dist.new_group(backend="gloo")
        car, why = setup_custom_all_reduce(cpu_group, device, max_bytes=max(args.sizes))
        dtype = DTYPES[args.dtype]
        esize = torch.empty(0, dtype=dtype).element_size()
        rows = []
        for nbytes in args.sizes:
            numel = nbytes // esize
            g = torch.Generator(device=device).manual_seed(nbytes + rank)
            x = torch.randn(numel, device=device, generator=g).to(dtype)
            row = {"bytes": nbytes, "auto_algo": choose_algo(nbytes, world) if car else None}
            nccl_out = x.clone()
            dist.all_reduce(nccl_out)
            buf = torch.zeros_like(x)   # timing runs all-reduce zeros: no overflow in place
            if car is not None:
                for algo in ("one_shot", "two_shot"):
                    car.algo = algo
                    got = car.all_reduce(x)
                    torch.cuda.synchronize()
                    err = (got.float() - nccl_out.float()).abs().max().item()
                    scale = nccl_out.float().abs().max().item() + 1e-6
                    row[f"{algo}_max_rel_err"] = err / scale
                    out = torch.empty_like(x)
                    row[f"{algo}_us"] = _time_graph(lambda: car.all_reduce(buf, out=out),
                                                    args.reps, args.iters, args.warmup,
                                                    cpu_group)
                car.algo = "auto"
            row["nccl_us"] = _time_graph(lambda: dist.all_reduce(buf), args.reps, args.iters,
                                         args.warmup, cpu_group)
            rows.append(row)
        everyone = [None] * world
        dist.all_gather_object(everyone, rows, group=cpu_group)
        if car is not None:
            car.close()
        dist.destroy_process_group()
        if rank == 0:   # the slowest rank's latency, the largest error
            merged = []
            for i, row in enumerate(rows):
                m = dict(row)
                for key in row:
                    if key.endswith("_us") or key.endswith("_err"):
                        m[key] = max(r[i][key] for r in everyone)
                merged.append(m)
            conn.send({"custom_all_reduce": why, "rows": merged,
                       "device": torch.cuda.get_device_name(device)})
        else:
            conn.send("ok")
    except BaseException:  # noqa: BLE001
        conn.send(traceback.format_exc())


def _table(result: dict) -> str:
    lines = [f"{'bytes':>10} {'auto':>9} {'one-shot us':>12} {'two-shot us':>12} "
             f"{'NCCL us':>9} {'best custom / NCCL':>19}"]
    for r in result["rows"]:
        one, two, nccl = r.get("one_shot_us"), r.get("two_shot_us"), r["nccl_us"]
        best = min(v for v in (one, two) if v is not None) if one is not None else None
        fmt = (lambda v: f"{v:12.2f}" if v is not None else f"{'-':>12}")
        ratio = f"{best / nccl:19.2f}" if best is not None else f"{'-':>19}"
        lines.append(f"{r['bytes']:>10} {r['auto_algo'] or '-':>9} {fmt(one)} {fmt(two)} "
                     f"{nccl:9.2f} {ratio}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=None,
                    help="ranks (default: the visible GPUs, rounded down to 2, 4, 6 or 8)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    ap.add_argument("--sizes", type=int, nargs="+", default=SIZES, help="message sizes in bytes")
    ap.add_argument("--reps", type=int, default=20, help="all-reduces per graph")
    ap.add_argument("--iters", type=int, default=50, help="graph replays timed")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "results", "all_reduce.json"))
    args = ap.parse_args(argv)
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n < 2:
        print(f"bench_all_reduce: needs at least 2 GPUs, {n} visible; nothing to measure")
        return 0
    world = args.world or max(w for w in (2, 4, 6, 8) if w <= n)
    if world > n or world < 2:
        print(f"bench_all_reduce: --world {world} needs {world} GPUs, {n} visible")
        return 2
    bad = [s for s in args.sizes if s <= 0 or s % 16]
    if bad:
        print(f"bench_all_reduce: sizes must be positive multiples of 16 bytes, got {bad}")
        return 2
    from llmcore.distributed import free_tcp_init_method

    ctx = mp.get_context("spawn")
    init_method = free_tcp_init_method()
    pipes, procs = [], []
    for rank in range(world):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_rank_main, args=(rank, world, init_method, args, child))
        p.start()
        child.close()
        pipes.append(parent)
        procs.append(p)
    answers = [c.recv() for c in pipes]
    for p in procs:
        p.join()
    failed = [a for a in answers if isinstance(a, str) and a != "ok"]
    if failed:
        print("bench_all_reduce: a rank failed:\n" + failed[0], file=sys.stderr)
        return 1
    result = answers[0]
    result.update(world=world, dtype=args.dtype, reps=args.reps, iters=args.iters,
                  mode="cuda_graph")
    print(f"{result['device']} x {world}, {args.dtype}; custom all-reduce: "
          f"{result['custom_all_reduce']}")
    print(_table(result))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
