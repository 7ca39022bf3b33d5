"""Helpers to build random paged-KV scenarios for the kernel tests (torch only)."""

import torch


def make_paged_cache(seq_lens, num_kv_heads, head_dim, block_size, dtype, device, cache_dtype=None,
                     k_scale=1.0, v_scale=1.0, seed=0, extra_blocks=3):
    """Random caches + shuffled block tables covering seq_lens. Returns
    (key_cache, value_cache, block_tables int32, seq_lens int32)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    nblk = [(L + block_size - 1) // block_size for L in seq_lens]
    total = sum(nblk) + extra_blocks
    max_blocks = max(max(nblk), 1)
    perm = torch.randperm(total, generator=g)
    bt = torch.zeros(len(seq_lens), max_blocks, dtype=torch.int32)
    i = 0
    for s, n in enumerate(nblk):
        bt[s, :n] = perm[i : i + n].to(torch.int32)
        i += n
    shape = (total, block_size, num_kv_heads, head_dim)
    k = torch.randn(shape, generator=g)
    v = torch.randn(shape, generator=g)
    cache_dtype = cache_dtype or dtype
    if cache_dtype in (getattr(torch, "float8_e4m3fn", None), getattr(torch, "float8_e5m2", None)):
        m = torch.finfo(cache_dtype).max
        kc = (k / k_scale).clamp(-m, m).to(cache_dtype)
        vc = (v / v_scale).clamp(-m, m).to(cache_dtype)
    else:
        kc, vc = k.to(cache_dtype), v.to(cache_dtype)
    return (kc.to(device), vc.to(device), bt.to(device),
            torch.tensor(seq_lens, dtype=torch.int32, device=device))
