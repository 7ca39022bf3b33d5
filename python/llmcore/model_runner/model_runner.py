"""Turns the scheduler's plan into tensors, runs the model over the paged KV cache and
returns logits for the rows the engine asks for.

The plan's arrays come from C++ as numpy views; each becomes a tensor with one copy at
most and no per-sequence Python loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from llmcore.layers.attention.metadata import AttentionMetadata
from llmcore.model_runner.kv_cache import GiB, KVCache, KVCacheSpec

logger = logging.getLogger(__name__)


@dataclass
class CacheConfig:
    block_size: int
    kv_cache_dtype: str               # "auto" = model dtype
    num_gpu_blocks_override: Optional[int]
    gpu_memory_utilization: float
    swap_space_gib: float
    cpu_kv_cache_space_gib: float     # size of the pool when the device is the CPU


def _tensor(a: np.ndarray, device: torch.device, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    return t.to(device, non_blocking=True) if device.type != "cpu" else t


class ModelRunner:
    def __init__(self, model: torch.nn.Module, model_config, cache_config: CacheConfig,
                 device: torch.device):
        self.model = model
        self.model_config = model_config
        self.cache_config = cache_config
        self.device = device
        kv_dtype = model_config.dtype
        if cache_config.kv_cache_dtype != "auto":
            raise ValueError(f"--kv-cache-dtype {cache_config.kv_cache_dtype} is not supported on "
                             f"{device.type} yet")
        self.kv_spec = KVCacheSpec(num_layers=model_config.num_layers,
                                   num_kv_heads=model_config.num_kv_heads,
                                   head_dim=model_config.head_dim,
                                   block_size=cache_config.block_size, dtype=kv_dtype)
        self.kv_cache: Optional[KVCache] = None

    # ------------------------------------------------------------------ sizing
    def determine_num_blocks(self) -> tuple[int, int]:
        """(device blocks, cpu swap blocks)."""
        cc = self.cache_config
        per_block = self.kv_spec.bytes_per_block
        if cc.num_gpu_blocks_override is not None:
            num_device = cc.num_gpu_blocks_override
        elif self.device.type == "cpu":
            num_device = int(cc.cpu_kv_cache_space_gib * GiB // per_block)
        else:
            free, total = torch.cuda.mem_get_info(self.device)
            used_by_others = total - free
            budget = total * cc.gpu_memory_utilization - used_by_others - self._activation_reserve()
            num_device = int(max(0, budget) // per_block)
        num_cpu = int(cc.swap_space_gib * GiB // per_block)
        if num_device < 1:
            raise ValueError("no memory left for the KV cache: raise --gpu-memory-utilization or "
                             "lower --max-model-len")
        return num_device, num_cpu

    def _activation_reserve(self) -> int:
        # Peak activations of a max-size step, measured by a profile run in the GPU runner;
        # here a conservative bound: logits of max_num_batched tokens is the largest buffer.
        return 2 * GiB

    def init_kv_cache(self, num_device_blocks: int, num_cpu_blocks: int) -> None:
        self.kv_cache = KVCache(self.kv_spec, num_device_blocks, num_cpu_blocks, self.device)

    # ------------------------------------------------------------------ step
    def build_metadata(self, plan) -> AttentionMetadata:
        dev = self.device
        qsl = np.asarray(plan.query_start_loc)
        n_prefill = int(plan.num_prefill_seqs)
        num_prefill_tokens = int(qsl[n_prefill])
        total = int(plan.num_batched_tokens)
        num_tokens = np.asarray(plan.num_tokens)
        seq_lens = np.asarray(plan.seq_lens)
        return AttentionMetadata(
            num_prefills=n_prefill,
            num_prefill_tokens=num_prefill_tokens,
            num_decode_tokens=total - num_prefill_tokens,
            slot_mapping=_tensor(plan.slot_mapping, dev, torch.int64),
            seq_lens=_tensor(seq_lens, dev),
            context_lens=_tensor(plan.context_lens, dev),
            query_start_loc=_tensor(qsl, dev),
            block_tables=_tensor(plan.block_tables, dev),
            max_query_len=int(num_tokens.max()) if len(num_tokens) else 0,
            max_seq_len=int(seq_lens.max()) if len(seq_lens) else 0,
            block_size=self.cache_config.block_size,
            seq_lens_host=seq_lens,
            context_lens_host=np.asarray(plan.context_lens),
            query_start_loc_host=qsl,
        )

    @torch.inference_mode()
    def execute(self, plan, logits_rows: np.ndarray) -> torch.Tensor:
        """Run one step; returns float32 logits for `logits_rows` (indices into the step's tokens)."""
        kv = self.kv_cache
        kv.swap_out(np.asarray(plan.blocks_to_swap_out))
        kv.swap_in(np.asarray(plan.blocks_to_swap_in))
        kv.copy_blocks(np.asarray(plan.blocks_to_copy))
        if plan.num_seqs == 0:
            return torch.empty((0, self.model_config.vocab_size), dtype=torch.float32)
        meta = self.build_metadata(plan)
        input_ids = _tensor(plan.input_ids, self.device, torch.int64)
        positions = _tensor(plan.positions, self.device, torch.int64)
        hidden = self.model(input_ids, positions, kv.device_caches, meta)
        rows = torch.from_numpy(logits_rows).to(self.device)
        return self.model.compute_logits(hidden.index_select(0, rows)).float()
