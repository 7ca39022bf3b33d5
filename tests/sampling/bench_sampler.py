"""Timing of Sampler.sample for N=64, V=49152 (not collected by pytest).

    PYTHONPATH=python python tests/sampling/bench_sampler.py
Prints min and median over repeated calls (the machine may be shared: min is the
better estimate of the cost)."""

import statistics
import time

import torch

from llmcore.sampling import Sampler, SamplingBatchState
from llmcore.sampling_params import SamplingParams

N, V = 64, 49152


def timeit(f, iters=50):
    for _ in range(5):
        f()
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return min(ts) * 1e3, statistics.median(ts) * 1e3


def bench(name, plist, logits):
    st = SamplingBatchState(256, V, 4096, seed=0)
    for i, p in enumerate(plist):
        st.add(i, p, list(range(10)), list(range(5)))
    slots = torch.arange(N)
    s = Sampler()
    mn, md = timeit(lambda: s.sample(logits, slots, st))
    print(f"{name:58s} min {mn:7.2f} ms   median {md:7.2f} ms")


def main():
    torch.manual_seed(0)
    flat = torch.randn(N, V) * 3          # pessimistic: mass spread over many tokens
    # LM-like: a peaked head (Zipf-ish) on top of noise
    peaked = torch.randn(N, V) * 2 - 2.0 * torch.log1p(torch.randperm(V).float())[None, :]
    print(f"torch threads: {torch.get_num_threads()}")
    mn, md = timeit(lambda: flat.argmax(-1))
    print(f"{'bare torch argmax (reference)':58s} min {mn:7.2f} ms   median {md:7.2f} ms")
    greedy = [SamplingParams(temperature=0)] * N
    bench("all greedy", greedy, flat)
    bench("all greedy, logprobs=5", [SamplingParams(temperature=0, logprobs=5)] * N, flat)
    bench("random T=0.8, no filters", [SamplingParams(temperature=0.8)] * N, flat)
    mixed = [SamplingParams(temperature=0.7, top_p=0.9, top_k=50) if i % 2 else
             SamplingParams(temperature=0.9, top_k=40) for i in range(N)]
    bench("mixed random: top_p=0.9+top_k=50 / top_k=40", mixed, flat)
    mixed_p = [SamplingParams(temperature=0.7, top_p=0.9) if i % 2 else
               SamplingParams(temperature=0.9, top_k=40) for i in range(N)]
    bench("mixed random: top_p=0.9 (no k) / top_k=40, LM-like logits", mixed_p, peaked)
    bench("mixed random: top_p=0.9 (no k) / top_k=40, flat randn*3", mixed_p, flat)
    sink = [SamplingParams(temperature=0) if i % 4 == 0 else
            SamplingParams(temperature=0.8, top_p=0.95, top_k=100,
                           seed=i if i % 3 == 0 else None,
                           repetition_penalty=1.1 if i % 5 == 0 else 1.0,
                           presence_penalty=0.5 if i % 6 == 0 else 0.0,
                           min_p=0.05 if i % 7 == 0 else 0.0,
                           logit_bias={5: 2.0} if i % 9 == 0 else None)
            for i in range(N)]
    bench("mixed: 1/4 greedy, seeded, penalties, min_p, bias", sink, flat)


if __name__ == "__main__":
    main()
