"""What one forward step tells every attention layer about the batch.

Built once per step by the model runner from the scheduler's plan; backends (CPU
torch ops, CUDA kernels) read it and nothing else. Sequences [0, num_prefills) are
prefill chunks (any number of new tokens, possibly after a cached prefix); the rest
are decodes with exactly one new token each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch


@dataclass
class AttentionMetadata:
    num_prefills: int
    num_prefill_tokens: int
    num_decode_tokens: int
    # device tensors
    slot_mapping: torch.Tensor      # int64 [num_tokens]; slot = block*block_size + offset
    seq_lens: torch.Tensor          # int32 [num_seqs]; tokens in the KV cache after this step
    context_lens: torch.Tensor      # int32 [num_seqs]; tokens in the KV cache before this step
    query_start_loc: torch.Tensor   # int32 [num_seqs + 1]
    block_tables: torch.Tensor      # int32 [num_seqs, max_blocks], padded with 0
    max_query_len: int
    max_seq_len: int
    block_size: int
    # host copies (numpy) for backends that loop or size buffers on the host
    seq_lens_host: np.ndarray
    context_lens_host: np.ndarray
    query_start_loc_host: np.ndarray
    # backend-private precomputed data (e.g. CPU decode gather indices)
    extra: Optional[dict] = None

    @property
    def num_seqs(self) -> int:
        return int(self.seq_lens_host.shape[0])

    @property
    def num_decodes(self) -> int:
        return self.num_seqs - self.num_prefills
