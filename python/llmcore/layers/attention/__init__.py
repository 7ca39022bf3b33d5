"""Paged attention: the `Attention` layer and its per-device backends."""

from llmcore.layers.attention.backend import AttentionBackend
from llmcore.layers.attention.layer import Attention
from llmcore.layers.attention.metadata import AttentionMetadata
from llmcore.layers.attention.selector import get_attn_backend, register_attn_backend

__all__ = ["Attention", "AttentionBackend", "AttentionMetadata", "get_attn_backend",
           "register_attn_backend"]
