"""Engine start-up time of the tensor-parallel executors: mp vs Ray, TP=2 on a tiny random
Llama (4 heads, 2 KV heads, fp32) on the CPU. Each case runs in a fresh Python process and
times `LLM(...)` (workers started, model loaded, KV cache sized and allocated) and the time
per step of a 4-prompt x 64-token greedy batch (the executor's per-step overhead dominates
on this model), then checks the greedy tokens agree across cases (and with TP=1).

Cases: mp; ray-local (the executor starts a local Ray cluster and shuts it down);
ray-joined (a Ray cluster is already up in the process: ray.init() first, not timed).

    python benchmarks/executor_startup.py [--repeats 1] [--tp 2] [--cases mp,ray-local,ray-joined]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap

_CHILD = textwrap.dedent("""
    import json, sys, time
    case, folder, tp = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if case == "ray-joined":
        import logging, ray
        ray.init(num_cpus=tp, include_dashboard=False, logging_level=logging.WARNING,
                 object_store_memory=80 * 1024 ** 2)
    from llmcore import LLM, SamplingParams
    backend = {"mp": "mp", "ray-local": "ray", "ray-joined": "ray", "tp1": None}[case]
    t0 = time.perf_counter()
    llm = LLM(model=folder, tensor_parallel_size=1 if case == "tp1" else tp,
              distributed_executor_backend=backend, skip_tokenizer_init=True, device="cpu",
              dtype="float32", max_model_len=128, cpu_kv_cache_space=0.01, max_num_seqs=8,
              seed=0)
    start_s = time.perf_counter() - t0
    outs = llm.generate(prompt_token_ids=[list(range(3, 8)), list(range(10, 27))],
                        sampling_params=SamplingParams(temperature=0.0, max_tokens=8,
                                                       ignore_eos=True), use_tqdm=False)
    params = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    prompts = [list(range(3 + i, 11 + i)) for i in range(4)]
    llm.generate(prompt_token_ids=prompts, sampling_params=params, use_tqdm=False)   # warm-up
    t0 = time.perf_counter()
    llm.generate(prompt_token_ids=prompts, sampling_params=params, use_tqdm=False)
    decode_ms = (time.perf_counter() - t0) * 1000 / params.max_tokens
    t0 = time.perf_counter()
    llm.llm_engine.core.shutdown()
    stop_s = time.perf_counter() - t0
    print("RESULT " + json.dumps({"start_s": start_s, "stop_s": stop_s, "step_ms": decode_ms,
                                  "tokens": [list(o.outputs[0].token_ids) for o in outs]}))
""")


def tiny_llama(folder: str) -> None:
    import torch
    import transformers as tf

    cfg = tf.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=False)
    torch.manual_seed(0)
    tf.LlamaForCausalLM(cfg).float().eval().save_pretrained(folder)


def run_case(case: str, folder: str, tp: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run([sys.executable, "-c", _CHILD, case, folder, str(tp)], env=env,
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"case {case} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--cases", default="mp,ray-local,ray-joined")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tiny_llama(folder)
        want = run_case("tp1", folder, args.tp)["tokens"]
        for case in args.cases.split(","):
            runs = [run_case(case, folder, args.tp) for _ in range(args.repeats)]
            same = all(r["tokens"] == want for r in runs)
            starts = [r["start_s"] for r in runs]
            print(f"{case:>10}: start-up median {statistics.median(starts):6.2f} s "
                  f"(runs {', '.join(f'{s:.2f}' for s in starts)}), shutdown median "
                  f"{statistics.median(r['stop_s'] for r in runs):5.2f} s, step (4 x 64 tokens) median "
                  f"{statistics.median(r['step_ms'] for r in runs):6.2f} ms, "
                  f"tokens {'==' if same else '!='} TP=1")


if __name__ == "__main__":
    main()
