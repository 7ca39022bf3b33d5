"""The `Attention` layer: paged KV cache write + attention, dispatched to a backend."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from llmcore.layers.attention.metadata import AttentionMetadata
from llmcore.layers.attention.selector import get_attn_backend
from llmcore.layers.context import LayerContext


class Attention(nn.Module):
    """q [T, H*D], k/v [T, KV*D], kv_cache = (key_cache, value_cache) each
    [num_blocks, block_size, KV, D] -> out [T, H*D].

    KV caches should be allocated with torch.zeros (not torch.empty): padded block-table
    entries and the unused tail of a sequence's last block are read and masked, and
    masking cannot remove NaN/inf garbage.

    num_heads / num_kv_heads are this rank's (QKVParallelLinear.num_heads / num_kv_heads):
    attention needs no communication, each rank attends with its own heads.
    """

    def __init__(self, num_heads: int, head_size: int, scale: float, *, ctx: LayerContext,
                 num_kv_heads: Optional[int] = None, sliding_window: Optional[int] = None):
        super().__init__()
        self.num_heads = num_heads
        self.head_size = head_size
        self.num_kv_heads = num_kv_heads or num_heads
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(f"{ctx.prefix or 'Attention'}: {self.num_heads} query heads are "
                             f"not a multiple of {self.num_kv_heads} key/value heads")
        self.scale = scale
        self.sliding_window = sliding_window
        self.prefix = ctx.prefix
        self.backend = get_attn_backend(ctx.device)(num_heads, head_size, self.num_kv_heads)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                kv_cache: tuple[torch.Tensor, torch.Tensor],
                attn_metadata: AttentionMetadata) -> torch.Tensor:
        key_cache, value_cache = kv_cache
        return self.backend.forward(q, k, v, key_cache, value_cache, attn_metadata,
                                    self.scale, self.sliding_window)

    def extra_repr(self) -> str:
        return (f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_size={self.head_size}, "
                f"sliding_window={self.sliding_window}, backend={self.backend.name}")
