"""Sampler smoke test + timing on CUDA (not collected by pytest; needs a GPU).

    PYTHONPATH=python python tests/sampling/gpu_check.py
"""

import time

import torch

from llmcore.sampling import Sampler, SamplingBatchState
from llmcore.sampling_params import SamplingParams

dev = torch.device("cuda")
N, V = 64, 49152


def mk(params, seed=0, slots=None):
    st = SamplingBatchState(256, V, 4096, device=dev, seed=seed, eos_token_id=2)
    slots = list(range(len(params))) if slots is None else slots
    for s, p in zip(slots, params):
        st.add(s, p, list(range(10)), [3, 4, 5])
    return st, torch.tensor(slots, device=dev)


def main():
    torch.manual_seed(0)
    logits = torch.randn(N, V, device=dev) * 3
    st, slots = mk([SamplingParams(temperature=0)] * N)
    assert torch.equal(Sampler().sample(logits, slots, st).token_ids, logits.argmax(-1))

    # masks: GPU vs CPU process_logits
    params = [SamplingParams(temperature=0) if i % 4 == 0 else
              SamplingParams(temperature=0.8, top_p=0.9 if i % 2 else 1.0,
                             top_k=50 if i % 3 else -1, min_p=0.05 if i % 5 == 0 else 0.0,
                             repetition_penalty=1.2 if i % 7 == 0 else 1.0,
                             logit_bias={7: 3.0} if i % 6 == 0 else None, min_tokens=2)
              for i in range(N)]
    st, slots = mk(params)
    xg = Sampler().process_logits(logits, slots, st).cpu()
    stc = SamplingBatchState(256, V, 4096, eos_token_id=2)
    for i, p in enumerate(params):
        stc.add(i, p, list(range(10)), [3, 4, 5])
    xc = Sampler().process_logits(logits.cpu(), torch.arange(N), stc)
    diff = (torch.isfinite(xg) != torch.isfinite(xc)).sum().item()
    print("mask differences GPU vs CPU (tokens):", diff)
    assert diff <= 2
    fin = torch.isfinite(xc)
    torch.testing.assert_close(xg[fin], xc[fin], rtol=1e-4, atol=1e-4)

    # seeded reproducibility across batch composition on GPU
    tgt = SamplingParams(temperature=0.9, top_p=0.95, seed=42)
    res = []
    for bs, pos in ((1, 0), (16, 7), (64, 63)):
        g = torch.Generator(device=dev).manual_seed(bs)
        ps = [SamplingParams(temperature=1.0, seed=None if j % 2 else j + 1000) for j in range(bs)]
        ps[pos] = tgt
        st, slots = mk(ps)
        toks = []
        for t in range(5):
            lg = torch.randn(bs, V, device=dev, generator=g) * 3
            torch.manual_seed(t)
            lg[pos] = torch.randn(V).to(dev) * 3
            toks.append(Sampler().sample(lg, slots, st).token_ids[pos].item())
        res.append(toks)
    print("seeded tokens per batch composition:", res)
    assert res[0] == res[1] == res[2]

    def bench(name, params):
        st, slots = mk(params)
        s = Sampler()
        for _ in range(5):
            s.sample(logits, slots, st)
        torch.cuda.synchronize()
        ts = []
        for _ in range(50):
            t = time.perf_counter()
            out = s.sample(logits, slots, st)
            out.token_ids.cpu()
            ts.append(time.perf_counter() - t)
        ts.sort()
        print(f"{name:50s} min {ts[0]*1e3:6.3f} ms  median {ts[len(ts)//2]*1e3:6.3f} ms")

    print(torch.cuda.get_device_name())
    bench("all greedy", [SamplingParams(temperature=0)] * N)
    bench("all greedy, logprobs=5", [SamplingParams(temperature=0, logprobs=5)] * N)
    bench("random T=0.8 no filters", [SamplingParams(temperature=0.8)] * N)
    bench("mixed top_p=0.9+top_k=50 / top_k=40",
          [SamplingParams(temperature=0.7, top_p=0.9, top_k=50) if i % 2 else
           SamplingParams(temperature=0.9, top_k=40) for i in range(N)])
    bench("mixed top_p=0.9 (no k) / top_k=40 (flat logits)",
          [SamplingParams(temperature=0.7, top_p=0.9) if i % 2 else
           SamplingParams(temperature=0.9, top_k=40) for i in range(N)])
    bench("kitchen sink (greedy/seeded/penalties/min_p/bias)", params)
    print("GPU CHECK OK")


if __name__ == "__main__":
    main()
