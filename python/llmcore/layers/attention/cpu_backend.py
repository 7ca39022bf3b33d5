"""Torch-ops attention backend (CPU; also a slow fallback on any device).

- KV write: one index_copy_ per cache at slot_mapping.
- Prefills with context_len 0: causal SDPA over the chunk's own k/v; runs of consecutive
  equal-length prefills are batched into one SDPA call.
- Prefills with a cached prefix (chunked prefill / prefix caching): the sequence's K/V
  (prefix + chunk, already written) is gathered from its blocks; explicit mask.
- Decodes: all decode sequences at once: their blocks are gathered into a padded
  [num_decodes, max_len, kv_heads, head_size] tensor and one masked SDPA runs for the
  whole batch (GQA through enable_gqa). The gather indices and the mask are built once
  per step and shared by all layers through attn_metadata.extra.
  fp32 on the CPU: a C++ kernel (llmcore._core.paged_decode_attention_f32) reads the
  paged cache in place instead (no gather, no mask); the torch path is the fallback for
  other dtypes and layouts.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from llmcore.layers.attention.backend import AttentionBackend
from llmcore.layers.attention.metadata import AttentionMetadata

_EXTRA_KEY = "cpu_attn"
# Decode cache blocking: gathered K+V bytes per SDPA call (0 = one SDPA for the batch).
# Decode in groups of sequences of at most this many K/V bytes (0: one group). Grouping
# measured no gain on 2 cores, so it is off; kept for larger caches than L2 on bigger hosts.
_DECODE_CHUNK_BYTES = 0

# The C++ kernel reads K/V in place (no gather into a padded copy, no mask). Its threads
# are OpenMP's, i.e. torch's own pool: with threads of its own it lost to gather + SDPA
# (torch's workers still spin after each GEMM and took the cores). Measured in-model
# (SmolLM2-135M fp32, 2 cores, decode step at batch 64): ctx 128 172 ms vs 221 ms,
# ctx 512 309 ms vs 486 ms, batch 8 43 ms vs 50 ms.
try:
    from llmcore._core import paged_decode_attention_f32 as _paged_decode_f32
except ImportError:  # an older build of the extension
    _paged_decode_f32 = None


def _sdpa(q, k, v, *, scale, mask=None, causal=False):
    # q [..., H, L, D], k/v [..., KV, S, D]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                          scale=scale, enable_gqa=q.shape[-3] != k.shape[-3])


class CpuAttentionBackend(AttentionBackend):
    name = "torch_sdpa"

    # ------------------------------------------------------------------ per-step plan
    def _plan(self, md: AttentionMetadata, sliding_window: Optional[int], device) -> dict:
        if md.extra is None:
            md.extra = {}
        key = (_EXTRA_KEY, sliding_window)
        plan = md.extra.get(key)
        if plan is not None:
            return plan
        plan = {}
        bs = md.block_size
        # prefill runs: (kind, seq indices, token start, token end, extra)
        runs = []
        qsl = md.query_start_loc_host
        ctx = md.context_lens_host
        seq_lens = md.seq_lens_host
        i = 0
        while i < md.num_prefills:
            s, e = int(qsl[i]), int(qsl[i + 1])
            L = e - s
            if int(ctx[i]) == 0:
                j = i + 1
                while (j < md.num_prefills and int(ctx[j]) == 0
                       and int(qsl[j + 1]) - int(qsl[j]) == L):
                    j += 1
                mask = None
                if sliding_window is not None and L > sliding_window:
                    p = torch.arange(L, device=device)
                    d = p[:, None] - p[None, :]
                    mask = (d >= 0) & (d < sliding_window)
                runs.append(("fresh", j - i, s, int(qsl[j]), L, mask))
                i = j
            else:
                c, sl = int(ctx[i]), int(seq_lens[i])
                nblk = -(-sl // bs)
                qpos = torch.arange(c, sl, device=device)
                kpos = torch.arange(sl, device=device)
                d = qpos[:, None] - kpos[None, :]
                mask = d >= 0
                if sliding_window is not None:
                    mask &= d < sliding_window
                runs.append(("cached", i, s, e, (nblk, sl), mask))
                i += 1
        plan["prefill_runs"] = runs
        nd = md.num_decodes
        if nd > 0:
            dec_lens_host = seq_lens[md.num_prefills:]
            max_len = int(dec_lens_host.max())
            nblk = -(-max_len // bs)
            if md.block_tables.shape[1] < nblk:
                raise ValueError(f"block_tables has {md.block_tables.shape[1]} columns but a "
                                 f"decode sequence of {max_len} tokens needs {nblk} blocks")
            plan["decode_nblk"] = nblk
            plan["decode_native"] = (
                md.block_tables[md.num_prefills:].to(torch.int32).contiguous(),
                md.seq_lens[md.num_prefills:].to(torch.int32).contiguous())
        md.extra[key] = plan
        return plan

    @staticmethod
    def _gather_plan(md: AttentionMetadata, plan: dict, sliding_window: Optional[int], device):
        """Block ids, padded length and mask of the torch decode path (gather + SDPA),
        built on its first use in a step: the C++ kernel needs none of them."""
        gather = plan.get("decode")
        if gather is None:
            nblk = plan["decode_nblk"]
            bt = md.block_tables[md.num_prefills:, :nblk]
            L = nblk * md.block_size
            pos = torch.arange(L, device=device)
            lens = md.seq_lens[md.num_prefills:].to(device=device, dtype=torch.int64)
            valid = pos[None, :] < lens[:, None]
            if sliding_window is not None:
                valid &= pos[None, :] >= (lens[:, None] - sliding_window)
            # flat block ids: index_select over [num_blocks, block_size*KV*D] rows is a
            # memcpy per block (3-4x faster than advanced indexing)
            gather = plan["decode"] = (bt.reshape(-1).to(torch.int64), L,
                                       valid[:, None, None, :])
        return gather

    # ------------------------------------------------------------------ forward
    def forward(self, q, k, v, key_cache, value_cache, attn_metadata, scale, sliding_window):
        md = attn_metadata
        T = q.shape[0]
        H, KV, D = self.num_heads, self.num_kv_heads, self.head_size
        q = q.view(T, H, D)
        k = k.view(T, KV, D)
        v = v.view(T, KV, D)
        has_cache = key_cache.numel() > 0
        if has_cache:
            slots = md.slot_mapping
            key_cache.view(-1, KV, D).index_copy_(0, slots, k)
            value_cache.view(-1, KV, D).index_copy_(0, slots, v)
        plan = self._plan(md, sliding_window, q.device)
        runs = plan["prefill_runs"]
        if len(runs) == 1 and md.num_decode_tokens == 0 and runs[0][0] == "fresh":
            # the whole step is one batch of equal-length fresh prompts: no output copy
            _, n, s, e, L, mask = runs[0]
            qb = q.view(n, L, H, D).transpose(1, 2)
            kb = k.view(n, L, KV, D).transpose(1, 2)
            vb = v.view(n, L, KV, D).transpose(1, 2)
            o = _sdpa(qb, kb, vb, scale=scale, mask=mask, causal=mask is None)
            return o.transpose(1, 2).reshape(T, H * D)
        if md.num_prefills == 0 and md.num_decode_tokens == T:
            return self._decode(q, key_cache, value_cache, md, plan, scale,
                                sliding_window).reshape(T, H * D)
        out = torch.empty(T, H, D, dtype=q.dtype, device=q.device)

        for kind, a, s, e, info, mask in plan["prefill_runs"]:
            if kind == "fresh":
                n, L = a, info
                if n == 1:
                    o = _sdpa(q[s:e].transpose(0, 1), k[s:e].transpose(0, 1),
                              v[s:e].transpose(0, 1), scale=scale, mask=mask,
                              causal=mask is None)
                    out[s:e] = o.transpose(0, 1)
                else:
                    qb = q[s:e].view(n, L, H, D).transpose(1, 2)
                    kb = k[s:e].view(n, L, KV, D).transpose(1, 2)
                    vb = v[s:e].view(n, L, KV, D).transpose(1, 2)
                    o = _sdpa(qb, kb, vb, scale=scale, mask=mask, causal=mask is None)
                    out[s:e].view(n, L, H, D).copy_(o.transpose(1, 2))
            else:
                i = a
                nblk, sl = info
                if not has_cache:
                    raise ValueError("a prefill with a cached prefix needs a KV cache")
                blocks = md.block_tables[i, :nblk].to(torch.int64)
                nb = key_cache.shape[0]
                kc = key_cache.view(nb, -1).index_select(0, blocks).view(-1, KV, D)[:sl]
                vc = value_cache.view(nb, -1).index_select(0, blocks).view(-1, KV, D)[:sl]
                o = _sdpa(q[s:e].transpose(0, 1), kc.transpose(0, 1), vc.transpose(0, 1),
                          scale=scale, mask=mask)
                out[s:e] = o.transpose(0, 1)

        if md.num_decode_tokens > 0:
            s = md.num_prefill_tokens
            out[s:] = self._decode(q[s:], key_cache, value_cache, md, plan, scale,
                                   sliding_window)
        return out.view(T, H * D)

    def _decode(self, qd, key_cache, value_cache, md, plan, scale, sliding_window=None):
        """qd [nd, H, D] (one token per decode sequence) -> [nd, H, D]."""
        if key_cache.numel() == 0:
            raise ValueError("decode steps need a KV cache")
        nd = qd.shape[0]
        KV, D = self.num_kv_heads, self.head_size
        if (_paged_decode_f32 is not None and qd.device.type == "cpu"
                and qd.dtype == torch.float32 and key_cache.dtype == torch.float32
                and value_cache.dtype == torch.float32 and key_cache.is_contiguous()
                and value_cache.is_contiguous() and qd.stride(2) == 1
                and qd.stride(1) == D):
            bt, lens = plan["decode_native"]
            H = self.num_heads
            out = torch.empty(nd, H, D, dtype=torch.float32)
            _paged_decode_f32(qd.data_ptr(), qd.stride(0), key_cache.data_ptr(),
                              value_cache.data_ptr(), bt.data_ptr(), lens.data_ptr(), nd, H,
                              KV, D, md.block_size, bt.shape[1], float(scale),
                              -1 if sliding_window is None else int(sliding_window),
                              # torch's intra-op thread count, passed explicitly: OpenMP's
                              # default is per thread, and the engine may run the model
                              # outside the thread that called torch.set_num_threads
                              out.data_ptr(), H * D, torch.get_num_threads())
            return out
        blocks, L, valid = self._gather_plan(md, plan, sliding_window, qd.device)
        nb = key_cache.shape[0]
        kc2, vc2 = key_cache.view(nb, -1), value_cache.view(nb, -1)
        per_seq = 2 * L * KV * D * key_cache.element_size()
        chunk = max(1, _DECODE_CHUNK_BYTES // per_seq) if _DECODE_CHUNK_BYTES > 0 else nd
        if chunk >= nd:
            kd = kc2.index_select(0, blocks).view(nd, L, KV, D).transpose(1, 2)
            vd = vc2.index_select(0, blocks).view(nd, L, KV, D).transpose(1, 2)
            o = _sdpa(qd.unsqueeze(2), kd, vd, scale=scale, mask=valid)  # [nd, H, 1, D]
            return o.squeeze(2)
        # Cache blocking: groups of sequences whose gathered K/V fit in the CPU cache, so
        # SDPA reads them back from cache instead of DRAM (a loop over groups, not seqs).
        out = torch.empty_like(qd)
        nblk = L // md.block_size
        blocks2 = blocks.view(nd, nblk)
        for s in range(0, nd, chunk):
            e = min(nd, s + chunk)
            bl = blocks2[s:e].reshape(-1)
            kd = kc2.index_select(0, bl).view(e - s, L, KV, D).transpose(1, 2)
            vd = vc2.index_select(0, bl).view(e - s, L, KV, D).transpose(1, 2)
            o = _sdpa(qd[s:e].unsqueeze(2), kd, vd, scale=scale, mask=valid[s:e])
            out[s:e] = o.squeeze(2)
        return out
