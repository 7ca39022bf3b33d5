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
    # GPU runner: the profile run's size and CUDA graphs
    max_num_seqs: int = 256
    max_num_batched_tokens: Optional[int] = None   # None: max(max_model_len, 2048)
    enforce_eager: bool = False


def _tensor(a: np.ndarray, device: torch.device, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    return t.to(device, non_blocking=True) if device.type != "cpu" else t


_FP8_KV = {"fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn,
           "fp8_e5m2": torch.float8_e5m2}


def kv_cache_torch_dtype(kv_cache_dtype: str, model_dtype: torch.dtype,
                         device: torch.device) -> torch.dtype:
    """--kv-cache-dtype -> the cache tensors' dtype. fp8 caches (per-tensor scale 1.0) need
    the CUDA kernels and fp16/bf16 activations."""
    if kv_cache_dtype == "auto":
        return model_dtype
    if kv_cache_dtype not in _FP8_KV:
        raise ValueError(f"--kv-cache-dtype must be one of auto, {', '.join(_FP8_KV)}; "
                         f"got {kv_cache_dtype!r}")
    from llmcore import ops
    if device.type != "cuda" or not ops.cuda_available():
        raise ValueError(f"--kv-cache-dtype {kv_cache_dtype} needs a CUDA device with llmcore's "
                         f"kernels (device here: {device.type})")
    if model_dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"--kv-cache-dtype {kv_cache_dtype} needs --dtype float16 or bfloat16, "
                         f"got {str(model_dtype).split('.')[-1]}")
    return _FP8_KV[kv_cache_dtype]


class ModelRunner:
    def __init__(self, model: torch.nn.Module, model_config, cache_config: CacheConfig,
                 device: torch.device):
        self.model = model
        self.model_config = model_config
        self.cache_config = cache_config
        self.device = device
        kv_dtype = kv_cache_torch_dtype(cache_config.kv_cache_dtype, model_config.dtype, device)
        self.kv_spec = KVCacheSpec(num_layers=model_config.num_layers,
                                   num_kv_heads=model_config.num_kv_heads,
                                   head_dim=model_config.head_dim,
                                   block_size=cache_config.block_size, dtype=kv_dtype)
        self.kv_cache: Optional[KVCache] = None
        self.graph_runner = None
        self.profile_peak_bytes: Optional[int] = None

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
            num_device = self._gpu_blocks_from_profile()
        num_cpu = int(cc.swap_space_gib * GiB // per_block)
        if num_device < 1:
            raise ValueError("no memory left for the KV cache: raise --gpu-memory-utilization or "
                             "lower --max-model-len")
        return num_device, num_cpu

    def _gpu_blocks_from_profile(self) -> int:
        """Run a max-size dummy step without a KV cache, measure the activation peak, and
        give the KV pool what is left of total * gpu_memory_utilization."""
        cc = self.cache_config
        dev = self.device
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        free, total = torch.cuda.mem_get_info(dev)
        used = total - free                      # weights, CUDA context, other processes
        self.profile_run()
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) - base
        self.profile_peak_bytes = peak
        torch.cuda.empty_cache()
        graph_reserve = 0 if (cc.enforce_eager or not self._graphs_possible()) else GiB // 2
        budget = total * cc.gpu_memory_utilization - used - peak - graph_reserve
        per_block = self.kv_spec.bytes_per_block
        logger.info("profile run: activation peak %.2f GiB, used %.2f GiB of %.2f GiB; "
                    "KV budget %.2f GiB", peak / GiB, used / GiB, total / GiB, max(budget, 0) / GiB)
        return int(max(0, budget) // per_block)

    @torch.inference_mode()
    def profile_run(self) -> None:
        """One prefill step of max_num_batched_tokens tokens (sequences of max_model_len)
        with empty KV caches, plus logits for up to max_num_seqs rows."""
        cc = self.cache_config
        L = self.model_config.max_model_len
        T = cc.max_num_batched_tokens or max(L, 2048)
        n_seqs = max(1, min(cc.max_num_seqs, -(-T // L) if T > L else 1))
        lens = [min(L, T - i * L) for i in range(-(-T // L))][:n_seqs] if T > L else [T]
        lens = [x for x in lens if x > 0]
        qsl = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
        T = int(qsl[-1])
        seq_lens = np.asarray(lens, dtype=np.int32)
        dev = self.device
        meta = AttentionMetadata(
            num_prefills=len(lens), num_prefill_tokens=T, num_decode_tokens=0,
            slot_mapping=torch.full((T,), -1, dtype=torch.int64, device=dev),
            seq_lens=torch.from_numpy(seq_lens).to(dev),
            context_lens=torch.zeros(len(lens), dtype=torch.int32, device=dev),
            query_start_loc=torch.from_numpy(qsl).to(dev),
            block_tables=torch.zeros((len(lens), 1), dtype=torch.int32, device=dev),
            max_query_len=int(seq_lens.max()), max_seq_len=int(seq_lens.max()),
            block_size=cc.block_size, seq_lens_host=seq_lens,
            context_lens_host=np.zeros(len(lens), dtype=np.int32), query_start_loc_host=qsl)
        input_ids = torch.zeros(T, dtype=torch.int64, device=dev)
        positions = torch.from_numpy(np.concatenate([np.arange(x) for x in lens])).to(dev)
        hidden = self.model(input_ids, positions, [], meta)
        rows = torch.arange(min(T, cc.max_num_seqs), device=dev) % T
        self.model.compute_logits(hidden.index_select(0, rows)).float()
        del hidden

    def _graphs_possible(self) -> bool:
        if self.device.type != "cuda":
            return False
        from llmcore import ops
        return ops.cuda_available()

    def init_kv_cache(self, num_device_blocks: int, num_cpu_blocks: int) -> None:
        self.kv_cache = KVCache(self.kv_spec, num_device_blocks, num_cpu_blocks, self.device)
        if self._graphs_possible() and not self.cache_config.enforce_eager:
            from llmcore.model_runner.cuda_graph import DecodeGraphRunner
            gr = DecodeGraphRunner(self.model, self.kv_cache.device_caches, self.device,
                                   self.cache_config.max_num_seqs, self.model_config.max_model_len,
                                   self.cache_config.block_size)
            try:
                gr.capture()
                self.graph_runner = gr
            except Exception as e:  # pragma: no cover - depends on the device
                logger.warning("CUDA graph capture failed (%s); running eagerly", e)
                self.graph_runner = None

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

    def index_tensor(self, values) -> torch.Tensor:
        """int64 indices on the device; from pinned memory without a stream sync on CUDA."""
        t = torch.as_tensor(np.asarray(values, dtype=np.int64))
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _rows_hidden(self, hidden: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        n = len(rows)
        if n == hidden.shape[0] and (n == 0 or (rows[0] == 0 and rows[-1] == n - 1
                                                and bool((np.diff(rows) == 1).all()))):
            return hidden  # every row, in order (decode-only steps)
        return hidden.index_select(0, self.index_tensor(rows))

    def _apply_input_fix(self, input_ids: torch.Tensor, input_fix) -> None:
        """input_ids[pos] = src[rows]: tokens sampled by the previous (still in flight) step."""
        if input_fix is None:
            return
        pos, src, rows = input_fix
        input_ids.index_copy_(0, self.index_tensor(pos),
                              src.index_select(0, self.index_tensor(rows)).to(input_ids.dtype))

    @torch.inference_mode()
    def execute(self, plan, logits_rows: np.ndarray, input_fix=None) -> torch.Tensor:
        """Run one step; returns float32 logits for `logits_rows` (indices into the step's tokens).

        input_fix: (positions, device tensor, rows): input_ids[positions] = tensor[rows], for
        tokens the scheduler only holds as placeholders (async scheduling)."""
        kv = self.kv_cache
        kv.swap_out(np.asarray(plan.blocks_to_swap_out))
        kv.swap_in(np.asarray(plan.blocks_to_swap_in))
        kv.copy_blocks(np.asarray(plan.blocks_to_copy))
        if plan.num_seqs == 0:
            return torch.empty((0, self.model_config.vocab_size), dtype=torch.float32)
        gr = self.graph_runner
        if (gr is not None and int(plan.num_prefill_seqs) == 0
                and int(plan.num_seqs) <= gr.max_bs):
            hidden = gr.run(plan, int(plan.num_seqs),
                            lambda ids: self._apply_input_fix(ids, input_fix))
            return self.model.compute_logits(self._rows_hidden(hidden, logits_rows)).float()
        meta = self.build_metadata(plan)
        input_ids = _tensor(plan.input_ids, self.device, torch.int64)
        self._apply_input_fix(input_ids, input_fix)
        positions = _tensor(plan.positions, self.device, torch.int64)
        hidden = self.model(input_ids, positions, kv.device_caches, meta)
        return self.model.compute_logits(self._rows_hidden(hidden, logits_rows)).float()
