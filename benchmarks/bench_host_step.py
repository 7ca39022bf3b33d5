"""Host time of one engine step without a model: the C++ scheduler, the engine core's token
bookkeeping, the front end's output processing, with an executor that samples instantly.

This is the work that must fit under the device's step time for async scheduling to hide
it (e.g. ~40 ms per step for Llama-3-8B at 512 sequences on an H200).

    python benchmarks/bench_host_step.py [--num-seqs 512] [--steps 200] [--output-json PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from llmcore.config import EngineArgs
from llmcore.engine.core import EngineCore
from llmcore.engine.frontend import EngineFrontend
from llmcore.engine.llm_engine import served_model_info
from llmcore.executor.base import Executor
from llmcore.model_runner.step_io import ModelRunnerOutput
from llmcore.sampling_params import SamplingParams

from report import write_json


class _Done:
    def __init__(self, out: ModelRunnerOutput):
        self._out = out

    def get(self) -> ModelRunnerOutput:
        return self._out


class InstantExecutor(Executor):
    """Samples token 7 for every row at once; what the engine does around it is real."""

    def _init_executor(self) -> None:
        self.blocks = 1 << 16

    def collective_rpc(self, method, args=(), kwargs=None):
        if method == "determine_num_blocks":
            return [(self.blocks, 0)]
        return [None]

    def execute_model(self, step):
        n = len(step.sample_seq_ids)
        return _Done(ModelRunnerOutput(sampled_token_ids=[7] * n, logprobs=[-0.5] * n))


def run(args) -> dict:
    ea = EngineArgs(model=args.model, max_model_len=4096, max_num_seqs=args.num_seqs,
                    async_scheduling=args.async_scheduling, skip_tokenizer_init=True,
                    max_num_batched_tokens=max(4096, args.num_seqs))
    config = ea.create_engine_config()
    core = EngineCore(config, eos_token_id=None, executor_class=InstantExecutor)
    frontend = EngineFrontend(None, served_model_info(config), None, args.num_seqs)
    params = SamplingParams(temperature=1.0, max_tokens=args.steps + 64, ignore_eos=True)
    rng = np.random.default_rng(0)
    for i in range(args.num_seqs):
        req = frontend.make_request(str(i), rng.integers(100, 1000, size=64).tolist(), params)
        req.stream_outputs = False
        core.add_request(frontend.register(req))
    for _ in range(8):  # prefill and warm-up
        frontend.process(core.step())
    core_us, front_us = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        outs = core.step()
        t1 = time.perf_counter()
        frontend.process(outs)
        t2 = time.perf_counter()
        core_us.append((t1 - t0) * 1e6)
        front_us.append((t2 - t1) * 1e6)
    core.abort_requests(list(core.requests))
    return {"num_seqs": args.num_seqs, "async_scheduling": args.async_scheduling,
            "core_us_median": statistics.median(core_us), "front_us_median": statistics.median(front_us),
            "step_us_median": statistics.median(c + f for c, f in zip(core_us, front_us)),
            "per_token_us": statistics.median(c + f for c, f in zip(core_us, front_us)) / args.num_seqs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--num-seqs", type=int, default=512)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--async-scheduling", action="store_true")
    p.add_argument("--output-json", default="benchmarks/results/host_step.json")
    args = p.parse_args()
    r = run(args)
    print(f"host step without a model: {args.num_seqs} sequences, async={args.async_scheduling}")
    print(f"{'core us':>10} {'front end us':>14} {'step us':>10} {'us/token':>10}")
    print(f"{r['core_us_median']:>10.0f} {r['front_us_median']:>14.0f} {r['step_us_median']:>10.0f} "
          f"{r['per_token_us']:>10.2f}")
    r.update(machine=platform.processor() or platform.machine(), cpus=os.cpu_count())
    write_json(args.output_json, r)


if __name__ == "__main__":
    main()
