"""Attention backend interface and selection by device.

A backend is constructed once per attention layer:

    backend = BackendCls(num_heads, head_size, num_kv_heads)

and called once per step:

    out = backend.forward(q, k, v, key_cache, value_cache, attn_metadata, scale, sliding_window)

- q: [T, num_heads*head_size]; k, v: [T, num_kv_heads*head_size] (may be strided views
  of the fused qkv output; the last dim is contiguous). Token order: the prefill chunks'
  tokens first (sequences [0, num_prefills)), then one token per decode sequence.
- key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_size], contiguous.
  The backend first writes the new k/v at attn_metadata.slot_mapping (so a GPU backend
  can fuse that with its kernel), then attends over each sequence's first seq_len
  positions (context_len cached + the new ones). Empty caches (numel()==0, e.g. a
  profiling run) mean: attend to the new tokens only, write nothing.
- scale: softmax scale; sliding_window: None or W (a query at position p sees keys
  at positions (p-W, p]).
- returns out [T, num_heads*head_size] in q's dtype.

A backend may stash per-step precomputed data in attn_metadata.extra (a dict), keyed by
its own name, to share it between layers.

This module is the interface only and imports no backend; the backends import it, and
the choice by device lives in selector.py (which imports them), so no import circle.
"""

from __future__ import annotations

from typing import Optional

import torch

from llmcore.layers.attention.metadata import AttentionMetadata


class AttentionBackend:
    name = "base"

    def __init__(self, num_heads: int, head_size: int, num_kv_heads: int):
        self.num_heads = num_heads
        self.head_size = head_size
        self.num_kv_heads = num_kv_heads

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_cache: torch.Tensor, value_cache: torch.Tensor,
                attn_metadata: AttentionMetadata, scale: float,
                sliding_window: Optional[int]) -> torch.Tensor:
        raise NotImplementedError
