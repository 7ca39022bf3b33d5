#!/usr/bin/env python3
"""Micro-benchmarks of the llmcore GPU kernels (llmcore.ops), with torch baselines where useful.

    python benchmarks/bench_kernels.py [--quick] [--json out.json]

Times are CUDA-event means over `iters` launches after warm-up; bandwidth counts the bytes a
kernel must move at minimum; attention FLOPs count 4*D per (query, key, head) pair visited.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import llmcore.ops as ops  # noqa: E402


def bench(fn, warmup=5, iters=20):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(iters):
        fn()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / iters * 1e3  # microseconds


def paged(seq_lens, hkv, d, bs, dtype):
    nb = sum((L + bs - 1) // bs for L in seq_lens)
    mb = max((L + bs - 1) // bs for L in seq_lens)
    kc = torch.randn(nb, bs, hkv, d, device="cuda", dtype=dtype)
    vc = torch.randn_like(kc)
    perm = torch.randperm(nb, device="cuda").to(torch.int32)
    bt = torch.zeros(len(seq_lens), mb, dtype=torch.int32, device="cuda")
    i = 0
    for s, L in enumerate(seq_lens):
        n = (L + bs - 1) // bs
        bt[s, :n] = perm[i : i + n]
        i += n
    return kc, vc, bt, torch.tensor(seq_lens, dtype=torch.int32, device="cuda")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not ops.cuda_available():
        print("needs an NVIDIA GPU and llmcore._cuda")
        return 1
    torch.manual_seed(0)
    dt = torch.bfloat16
    rows = []

    def rec(name, us, **extra):
        rows.append(dict(kernel=name, us=round(us, 2), **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in extra.items()}))
        ex = "  ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items())
        print(f"{name:58s} {us:10.1f} us  {ex}", flush=True)

    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    # ---------------------------------------------------------------- decode attention
    # Both kernels per shape: tensor-core (mma, the default) and CUDA-core (tc=off).
    H, Hkv, D, bs = 32, 8, 128, 16
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    # Short contexts at batch 256 are what a saturated server decodes (128-token chats).
    for B, L in [(1, 1024), (1, 32768), (32, 1024), (32, 8192), (128, 2048), (256, 128), (256, 256),
                 (256, 512), (256, 1024), (256, 1536), (256, 4096)]:
        if args.quick and B * L > 32 * 8192 and (B, L) != (256, 1536):
            continue
        kc, vc, bt, sl = paged([L] * B, Hkv, D, bs, dt)
        q = torch.randn(B, H, D, device="cuda", dtype=dt)
        out = torch.empty_like(q)
        ns, _ = ops.decode_split_plan(B, H, Hkv, L, -1, sms)
        for tc in (True, False):
            us = bench(lambda: ops.paged_attention_decode(q, kc, vc, bt, sl, D ** -0.5, out=out, max_seq_len=L,
                                                          use_tensor_cores=tc))
            gbs = B * L * Hkv * D * 2 * 2 / us / 1e3
            rec(f"paged_decode bf16 B={B} L={L} H={H}/{Hkv} D={D} bs={bs} tc={'on' if tc else 'off'}", us,
                GBps=gbs, splits=ns)
    # fp8 cache (GBps counts the fp8 bytes read)
    one = torch.ones(1, device="cuda")
    for B, L in [(32, 8192), (256, 1024), (256, 1536), (512, 1536)]:
        kc, vc, bt, sl = paged([L] * B, Hkv, D, bs, dt)
        kc8, vc8 = kc.to(torch.float8_e4m3fn), vc.to(torch.float8_e4m3fn)
        del kc, vc
        q = torch.randn(B, H, D, device="cuda", dtype=dt)
        for tc in (True, False):
            us = bench(lambda: ops.paged_attention_decode(q, kc8, vc8, bt, sl, D ** -0.5, k_scale=one, v_scale=one,
                                                          max_seq_len=L, use_tensor_cores=tc))
            rec(f"paged_decode bf16/fp8e4m3-cache B={B} L={L} H={H}/{Hkv} tc={'on' if tc else 'off'}", us,
                GBps=B * L * Hkv * D * 2 / us / 1e3)

    # ---------------------------------------------------------------- prefill attention
    for S, L, ql in [(4, 2048, 2048), (1, 8192, 8192), (8, 8192, 512), (16, 1024, 1024)]:
        if args.quick and L * ql * S > 4 * 2048 * 2048:
            continue
        kc, vc, bt, sl = paged([L] * S, Hkv, D, bs, dt)
        qsl = torch.arange(S + 1, dtype=torch.int32, device="cuda") * ql
        q = torch.randn(S * ql, H, D, device="cuda", dtype=dt)
        out = torch.empty_like(q)
        pairs = S * (ql * (L - ql) + ql * (ql + 1) / 2)
        us = bench(lambda: ops.prefill_attention(q, kc, vc, bt, sl, qsl, D ** -0.5, out=out, max_query_len=ql),
                   warmup=3, iters=10)
        rec(f"prefill mma bf16 S={S} L={L} q={ql} H={H}/{Hkv} D={D}", us, TFLOPs=pairs * H * D * 4 / us / 1e6)
        if ql == L:  # dense baseline: torch SDPA (flash) on contiguous K/V
            qd = q.view(S, ql, H, D).transpose(1, 2)
            kd = torch.randn(S, Hkv, L, D, device="cuda", dtype=dt).repeat_interleave(H // Hkv, 1)
            vd = torch.randn_like(kd)
            us2 = bench(lambda: torch.nn.functional.scaled_dot_product_attention(qd, kd, vd, is_causal=True),
                        warmup=3, iters=10)
            rec(f"  torch SDPA causal (dense, baseline) S={S} L={L}", us2, TFLOPs=pairs * H * D * 4 / us2 / 1e6)

    # ---------------------------------------------------------------- cache write
    T = 4096
    k = torch.randn(T, Hkv, D, device="cuda", dtype=dt)
    v = torch.randn_like(k)
    kc = torch.empty(T // bs + 1, bs, Hkv, D, device="cuda", dtype=dt)
    vc = torch.empty_like(kc)
    slots = torch.randperm(T, device="cuda")
    us = bench(lambda: ops.reshape_and_cache(k, v, kc, vc, slots))
    rec(f"reshape_and_cache bf16 T={T} Hkv={Hkv} D={D}", us, GBps=T * Hkv * D * 2 * 2 * 2 / us / 1e3)
    kc8, vc8 = torch.empty_like(kc, dtype=torch.float8_e4m3fn), torch.empty_like(vc, dtype=torch.float8_e4m3fn)
    us = bench(lambda: ops.reshape_and_cache(k, v, kc8, vc8, slots, one, one))
    rec(f"reshape_and_cache bf16->fp8e4m3 T={T}", us, GBps=T * Hkv * D * 2 * 3 / us / 1e3)

    # ---------------------------------------------------------------- norm / act / rope
    for T, Hd in [(1, 4096), (4096, 4096), (4096, 8192)]:
        x = torch.randn(T, Hd, device="cuda", dtype=dt)
        w = torch.randn(Hd, device="cuda", dtype=dt)
        r = torch.randn_like(x)
        us = bench(lambda: ops.rms_norm(x, w, 1e-6))
        rec(f"rms_norm bf16 T={T} H={Hd}", us, GBps=T * Hd * 4 / us / 1e3)
        us = bench(lambda: ops.fused_add_rms_norm(x, r, w, 1e-6))
        rec(f"fused_add_rms_norm bf16 T={T} H={Hd}", us, GBps=T * Hd * 8 / us / 1e3)
    x = torch.randn(4096, 2 * 14336, device="cuda", dtype=dt)
    us = bench(lambda: ops.silu_and_mul(x))
    rec("silu_and_mul bf16 T=4096 d=14336", us, GBps=4096 * 14336 * 6 / us / 1e3)
    cache = ops.compute_cos_sin_cache(D, 8192, 500000.0, device="cuda")
    qkv = torch.randn(4096, (H + 2 * Hkv) * D, device="cuda", dtype=dt)
    qv, kv = qkv[:, : H * D].view(4096, H, D), qkv[:, H * D : (H + Hkv) * D].view(4096, Hkv, D)
    pos = torch.randint(0, 8192, (4096,), device="cuda")
    us = bench(lambda: ops.rotary_embedding(pos, qv, kv, cache, True))
    rec(f"rotary neox bf16 T=4096 H={H}/{Hkv} D={D}", us, GBps=4096 * (H + Hkv) * D * 4 / us / 1e3)

    # ---------------------------------------------------------------- sampling
    for B, V, std in [(1, 128256, 1.0), (1, 128256, 4.0), (64, 128256, 1.0), (64, 128256, 4.0), (256, 152064, 4.0)]:
        # std 1: a very flat distribution (top-p keeps most of the vocabulary; worst case);
        # std 4: closer to real LM logits.
        logits = torch.randn(B, V, device="cuda", dtype=torch.float32) * std
        us = bench(lambda: ops.argmax(logits))
        rec(f"argmax fp32 B={B} V={V} std={std}", us, GBps=B * V * 4 / us / 1e3)
        t = torch.full((B,), 0.8, device="cuda")
        k = torch.full((B,), 50, dtype=torch.int32, device="cuda")
        p = torch.full((B,), 0.9, device="cuda")
        m = torch.full((B,), 0.05, device="cuda")
        u = torch.rand(B, device="cuda")
        us = bench(lambda: ops.sample(logits, t, k, p, m, uniform=u))
        rec(f"sample k50/p0.9/minp0.05 fp32 B={B} V={V} std={std}", us)
        us2 = bench(lambda: ops.sample(logits, t, None, p, None, uniform=u))
        rec(f"sample top-p 0.9 only fp32 B={B} V={V} std={std}", us2)

        def torch_sort_sample():
            pr = torch.softmax(logits / 0.8, -1)
            sp, si = torch.sort(pr, descending=True, dim=-1)
            cs = sp.cumsum(-1)
            sp[(cs - sp) > 0.9] = 0
            return si.gather(1, torch.multinomial(sp, 1))
        us3 = bench(torch_sort_sample)
        rec(f"  torch sort-based top-p baseline B={B} V={V} std={std}", us3)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
