"""CUDA attention backend on the llmcore kernels (``llmcore.ops``).

Per layer and step:
- ``reshape_and_cache`` writes this step's k/v at ``slot_mapping`` (strided views of the
  fused qkv output are read in place);
- the prefill tokens (first ``num_prefill_tokens``) go through ``prefill_attention``
  (varlen causal, cached prefix read from the paged cache);
- the decode tokens (one per remaining sequence) go through ``paged_attention_decode``.

Both kernels get host ints for ``max_query_len`` / ``max_seq_len`` from the metadata, so
no step syncs the device. Empty caches (the profiling run) fall back to the torch-ops
backend (attend to the new tokens only, write nothing).

Chosen for ``cuda`` / ``hip`` by selector.py only when the compiled kernels import
(``kernels_available()``); otherwise ``get_attn_backend`` falls back to the torch-ops
backend.
"""

from __future__ import annotations

from typing import Optional

import torch

from llmcore import ops
from llmcore.layers.attention.backend import AttentionBackend
from llmcore.layers.attention.cpu_backend import CpuAttentionBackend
from llmcore.layers.attention.metadata import AttentionMetadata


class CudaAttentionBackend(AttentionBackend):
    name = "llmcore_cuda"

    def __init__(self, num_heads: int, head_size: int, num_kv_heads: int):
        super().__init__(num_heads, head_size, num_kv_heads)
        self._fallback = CpuAttentionBackend(num_heads, head_size, num_kv_heads)
        self._kv_scales = None  # fp8 caches: per-tensor K and V scales (1.0, as vLLM without
        #                          calibrated scales); device tensors so graphs can capture them

    def _scales(self, cache: torch.Tensor):
        if cache.element_size() != 1:
            return None, None
        if self._kv_scales is None:
            one = torch.ones(1, dtype=torch.float32, device=cache.device)
            self._kv_scales = (one, one.clone())
        return self._kv_scales

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_cache: torch.Tensor, value_cache: torch.Tensor,
                attn_metadata: AttentionMetadata, scale: float,
                sliding_window: Optional[int]) -> torch.Tensor:
        md = attn_metadata
        if key_cache.numel() == 0 or self.head_size not in (64, 128):
            return self._fallback.forward(q, k, v, key_cache, value_cache, md, scale,
                                          sliding_window)
        T = q.shape[0]
        H, KV, D = self.num_heads, self.num_kv_heads, self.head_size
        k3 = k.unflatten(-1, (KV, D))
        v3 = v.unflatten(-1, (KV, D))
        ks, vs = self._scales(key_cache)
        ops.reshape_and_cache(k3, v3, key_cache, value_cache, md.slot_mapping, ks, vs)
        q3 = q.unflatten(-1, (H, D))
        out = torch.empty((T, H, D), dtype=q.dtype, device=q.device)
        sw = int(sliding_window) if sliding_window else -1
        np_ = md.num_prefills
        ntp = md.num_prefill_tokens
        if np_ > 0:
            ops.prefill_attention(q3[:ntp], key_cache, value_cache, md.block_tables[:np_],
                                  md.seq_lens[:np_], md.query_start_loc[:np_ + 1], scale,
                                  sliding_window=sw, out=out[:ntp], k_scale=ks, v_scale=vs,
                                  max_query_len=max(int(md.max_query_len), 1))
        if T > ntp:
            ops.paged_attention_decode(q3[ntp:], key_cache, value_cache, md.block_tables[np_:],
                                       md.seq_lens[np_:], scale, sliding_window=sw,
                                       out=out[ntp:], max_seq_len=max(int(md.max_seq_len), 1),
                                       k_scale=ks, v_scale=vs)
        return out.view(T, H * D)


def kernels_available() -> bool:
    return ops.cuda_available()
