"""Where a bs-1 decode step's time goes on the GPU: CUDA-graph replay of the model (up to the
final norm), the eager lm_head/logits, and the whole engine step (scheduler + runner + sampler
+ output processing), measured on one engine.

    python benchmarks/decode_breakdown.py --model benchmarks/configs/llama3-8b --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="benchmarks/configs/llama3-8b")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--output-json", default=None)
    a = p.parse_args()
    from llmcore import LLM, SamplingParams
    llm = LLM(model=a.model, load_format="dummy", dtype=a.dtype, max_num_seqs=1,
              skip_tokenizer_init=True)
    eng = llm.llm_engine
    runner = eng.runner
    gr = runner.graph_runner
    res = {}

    def timed(fn, n):
        torch.cuda.synchronize()
        s = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - s) / n * 1e3

    if gr is not None:
        g = gr.graphs[1]
        res["graph_replay_ms"] = timed(g.replay, a.iters)
        h = gr.outputs[1][:1]
        with torch.inference_mode():
            res["logits_ms"] = timed(lambda: runner.model.compute_logits(h).float(), a.iters)
    prompt = [{"prompt_token_ids": list(range(1000, 1128))}]
    sp = lambda n: SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=n)  # noqa: E731
    llm.generate(prompt, sp(8), use_tqdm=False)
    t1 = timed(lambda: llm.generate(prompt, sp(1), use_tqdm=False), 5)
    t129 = timed(lambda: llm.generate(prompt, sp(129), use_tqdm=False), 3)
    res["prefill128_plus_1_ms"] = t1
    res["engine_decode_step_ms"] = (t129 - t1) / 128
    print(json.dumps(res, indent=2))
    if a.output_json:
        with open(a.output_json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
