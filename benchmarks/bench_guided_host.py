"""Host time per token of guided decoding without a model: what a small model on a GPU
pays for its grammar masks, with the device's work taken out.

The engine core, its scheduler, the grammar manager (the real backend: compile, fill,
accept) and the front end run as in a server; the executor samples at once: a random
token the row's mask allows for guided rows, token 7 otherwise. The same requests then
run unconstrained with each one's max_tokens set to the length its guided run produced,
so both runs decode the same tokens per request. On a GPU a 135M model's step is shorter
than the host's, so this ratio bounds the guided/unconstrained throughput ratio there.

    python benchmarks/bench_guided_host.py --model DIR [--num-seqs 64] [--num-prompts 256]

DIR: a HF folder with config.json and the tokenizer (only the sizes and the vocabulary
are used; no weights are read). The executor's own time (drawing the tokens, and
--launch-us of busy host time per launch, holding the GIL as a GPU runner's launch does:
the window the mask fill can hide in) is measured and left out of the host figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_host_step import InstantExecutor, _Done  # noqa: E402
from report import print_table, write_json  # noqa: E402
from structured_output import SCHEMA  # noqa: E402  (the same typical schema)

from llmcore.config import EngineArgs  # noqa: E402
from llmcore.engine.core import EngineCore  # noqa: E402
from llmcore.engine.frontend import EngineFrontend  # noqa: E402
from llmcore.engine.llm_engine import served_model_info  # noqa: E402
from llmcore.model_runner.step_io import ModelRunnerOutput  # noqa: E402
from llmcore.sampling_params import GuidedDecodingParams, SamplingParams  # noqa: E402


class MaskSamplingExecutor(InstantExecutor):
    """bench_host_step's instant executor, deferring sampling for the grammar mask; a
    guided row draws a random token its mask allows."""

    supports_deferred_sampling = True

    launch_s = 0.0                 # busy host time per execute_model (set by _run)

    def _init_executor(self) -> None:
        super()._init_executor()
        self.rng = np.random.default_rng(0)
        self.exec_s = 0.0          # time spent here, left out of the host figures
        self._deferred = None

    def _draw(self, step, bitmask, rows) -> _Done:
        n = len(step.sample_seq_ids)
        tokens = [7] * n
        if bitmask is not None:
            for row, words in zip(rows.tolist(), bitmask.view(np.uint32)):
                nz = np.flatnonzero(words)
                w = int(nz[self.rng.integers(len(nz))])
                bits = [b for b in range(32) if int(words[w]) >> b & 1]
                tokens[row] = 32 * w + bits[self.rng.integers(len(bits))]
        return _Done(ModelRunnerOutput(sampled_token_ids=tokens, logprobs=[-0.5] * n))

    def execute_model(self, step):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < self.launch_s:
            pass   # a runner's launch: host work under the GIL
        try:
            if step.defer_sampling:
                self._deferred = step
                return None
            return self._draw(step, step.grammar_bitmask, step.grammar_rows)
        finally:
            self.exec_s += time.perf_counter() - t0

    def sample_deferred(self, grammar_bitmask, grammar_rows):
        t0 = time.perf_counter()
        step, self._deferred = self._deferred, None
        out = self._draw(step, grammar_bitmask, grammar_rows)
        self.exec_s += time.perf_counter() - t0
        return out


def _run(args, lengths=None) -> dict:
    """One pass over the prompts: guided when lengths is None, else unconstrained with
    max_tokens = lengths[i]."""
    ea = EngineArgs(model=args.model, max_model_len=1024, max_num_seqs=args.num_seqs,
                    async_scheduling=not args.sync, load_format="dummy",
                    guided_decoding_backend=args.backend,
                    max_num_batched_tokens=max(2048, args.num_seqs))
    config = ea.create_engine_config()
    MaskSamplingExecutor.launch_s = args.launch_us * 1e-6
    core = EngineCore(config, eos_token_id=2, executor_class=MaskSamplingExecutor)
    frontend = EngineFrontend(None, served_model_info(config), None, args.num_seqs)
    rng = np.random.default_rng(1)

    def add(i: int, params: SamplingParams) -> None:
        req = frontend.make_request(str(i), rng.integers(100, 1000, size=32).tolist(), params)
        req.stream_outputs = False
        core.add_request(frontend.register(req))

    def drain() -> tuple:
        n_tokens, steps = 0, 0
        while core.requests:
            outs = core.step()
            steps += 1
            n_tokens += sum(len(o.new_token_ids) for o in outs.outputs)
            frontend.process(outs)
        return n_tokens, steps

    if lengths is None:
        # compile the schema and warm up first (a cached schema is the steady state)
        add(-1, SamplingParams(max_tokens=8, guided_decoding=GuidedDecodingParams(json=SCHEMA)))
        drain()
    core.executor.exec_s = 0.0
    t0 = time.perf_counter()
    for i in range(args.num_prompts):
        if lengths is None:
            add(i, SamplingParams(temperature=1.0, max_tokens=256,
                                  guided_decoding=GuidedDecodingParams(json=SCHEMA)))
        else:
            add(i, SamplingParams(temperature=1.0, max_tokens=lengths[i], ignore_eos=True))
    n_tokens, steps = drain()
    total = time.perf_counter() - t0
    host = total - core.executor.exec_s
    core.shutdown()
    return {"tokens": n_tokens, "steps": steps, "host_s": host, "executor_s": core.executor.exec_s,
            "host_us_per_token": host / max(n_tokens, 1) * 1e6,
            "host_us_per_step": host / max(steps, 1) * 1e6}


def run(args) -> dict:
    # per-request lengths of the guided run, for the unconstrained run's max_tokens
    lengths: dict = {}
    orig = EngineFrontend.process

    def record(self, outs):
        for o in outs.outputs:
            lengths[o.request_id] = lengths.get(o.request_id, 0) + len(o.new_token_ids)
        return orig(self, outs)

    EngineFrontend.process = record
    try:
        guided = [_run(args)]
    finally:
        EngineFrontend.process = orig
    per_req = [max(1, lengths.get(str(i), 1)) for i in range(args.num_prompts)]
    free = [_run(args, per_req)]
    for _ in range(args.repeats - 1):   # interleaved: the machine's speed drifts
        guided.append(_run(args))
        free.append(_run(args, per_req))
    g = statistics.median(r["host_us_per_token"] for r in guided)
    f = statistics.median(r["host_us_per_token"] for r in free)
    return {"backend": args.backend, "num_seqs": args.num_seqs, "num_prompts": args.num_prompts,
            "async_scheduling": not args.sync, "launch_us": args.launch_us,
            "guided": guided, "free": free,
            "guided_host_us_per_token": g, "free_host_us_per_token": f, "ratio": f / g,
            "mean_length": sum(per_req) / len(per_req)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF folder: config.json + tokenizer")
    p.add_argument("--backend", default="xgrammar")
    p.add_argument("--num-seqs", type=int, default=64)
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sync", action="store_true", help="no async scheduling")
    p.add_argument("--launch-us", type=float, default=300.0,
                   help="busy host time per launch, as a GPU runner's (~0.3 ms for SmolLM2)")
    p.add_argument("--output-json", default="benchmarks/results/guided_host.json")
    args = p.parse_args()
    r = run(args)
    print(f"guided host time without a model: {args.backend}, batch {args.num_seqs}, "
          f"{args.num_prompts} prompts, mean {r['mean_length']:.1f} tokens, "
          f"async={not args.sync}, launch {args.launch_us:g} us")
    rows = [(name, statistics.median(x["host_us_per_token"] for x in r[name]),
             statistics.median(x["host_us_per_step"] for x in r[name]),
             statistics.median(x["executor_s"] for x in r[name]) * 1e3)
            for name in ("guided", "free")]
    print_table([("run", "<8"), ("host us/token", ">14.2f"), ("host us/step", ">13.0f"),
                 ("executor ms", ">12.0f")], rows)
    print(f"ratio free/guided host time per token: {r['ratio']:.3f}")
    r.update(machine=platform.processor() or platform.machine(), cpus=os.cpu_count())
    write_json(args.output_json, r)


if __name__ == "__main__":
    main()
