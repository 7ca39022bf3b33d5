"""Per-step IPC overhead of the engine-core boundary: one EngineCoreOutputs message
(N outputs of 1 token each, with or without top-k logprobs) encoded, sent over a ZMQ
ipc:// PUSH/PULL pair, received and decoded, exactly as core_proc / core_client do.

    python benchmarks/bench_core_ipc.py [--num-outputs 256] [--steps 2000] [--output-json f]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time

import msgspec
import zmq

from llmcore.engine.core_proc import OUTPUT_FRAME_OUTPUTS
from llmcore.engine.core_types import (
    EngineCoreOutput,
    EngineCoreOutputs,
    PositionLogprobs,
    SchedulerStats,
)


def make_outputs(num_outputs: int, topk: int) -> EngineCoreOutputs:
    outs = []
    for i in range(num_outputs):
        out = EngineCoreOutput(request_id=f"cmpl-{i:08d}-0", new_token_ids=[1000 + i],
                               new_token_logprobs=[-0.25])
        if topk:
            out.new_logprobs = PositionLogprobs(
                token_ids=[1000 + i], logprobs=[-0.25], ranks=[1],
                topk_ids=[[1000 + i + j for j in range(topk)]],
                topk_logprobs=[[-0.25 - 0.5 * j for j in range(topk)]])
        outs.append(out)
    return EngineCoreOutputs(outputs=outs, stats=SchedulerStats(num_running=num_outputs),
                             timestamp=time.time())


def bench_case(msg: EngineCoreOutputs, steps: int, push: zmq.Socket, pull: zmq.Socket) -> dict:
    encoder = msgspec.msgpack.Encoder()
    decoder = msgspec.msgpack.Decoder(EngineCoreOutputs)
    payload = encoder.encode(msg)
    assert decoder.decode(payload) == msg

    def timed(fn) -> float:
        for _ in range(min(100, steps)):  # warm-up
            fn()
        samples = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(steps // 5):
                fn()
            samples.append((time.perf_counter() - t0) / (steps // 5) * 1e6)
        return statistics.median(samples)

    def round_trip():
        push.send_multipart([OUTPUT_FRAME_OUTPUTS, encoder.encode(msg)], copy=False)
        frames = pull.recv_multipart(copy=False)
        decoder.decode(frames[1].buffer)

    return {
        "bytes": len(payload),
        "encode_us": timed(lambda: encoder.encode(msg)),
        "decode_us": timed(lambda: decoder.decode(payload)),
        "step_us": timed(round_trip),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-outputs", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--topk", type=int, default=5, help="top-k of the logprobs case")
    parser.add_argument("--output-json", default=None)
    args = parser.parse_args()

    tmpdir = tempfile.mkdtemp(prefix="llmcore-bench-ipc-")
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(f"ipc://{tmpdir}/out")
    push = ctx.socket(zmq.PUSH)
    push.connect(f"ipc://{tmpdir}/out")
    try:
        cases = {
            f"{args.num_outputs} x 1 token": make_outputs(args.num_outputs, 0),
            f"{args.num_outputs} x 1 token + top-{args.topk} logprobs":
                make_outputs(args.num_outputs, args.topk),
        }
        results = {name: bench_case(msg, args.steps, push, pull) for name, msg in cases.items()}
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        ctx.term()
        shutil.rmtree(tmpdir, ignore_errors=True)

    header = f"{'case':<40} {'bytes':>8} {'encode µs':>10} {'decode µs':>10} {'step µs':>10}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(f"{name:<40} {r['bytes']:>8} {r['encode_us']:>10.1f} {r['decode_us']:>10.1f} "
              f"{r['step_us']:>10.1f}")
    print("step = encode + send + recv + decode over ipc:// (one thread, median of 5 runs)")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"num_outputs": args.num_outputs, "steps": args.steps,
                       "topk": args.topk, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
