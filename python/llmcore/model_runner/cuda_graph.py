"""CUDA graphs for decode-only steps.

One graph per batch size in ``capture_sizes`` (1, 2, 4, 8, 16, 24, 32, ... up to
max_num_seqs), captured largest first so all share one memory pool. A decode-only step of
n sequences replays the graph of the smallest captured size >= n: the inputs are copied
into static buffers, the padding rows get slot -1 (no KV write) and seq_len 1 (their
output is discarded). The model's forward runs up to the final norm inside the graph; the
lm_head/logits run eagerly on the selected rows only.

Graphs cover contexts up to ``max_seq_len_to_capture`` (vLLM's --max-seq-len-to-capture,
at most max_model_len): the block-table buffer holds that many tokens' blocks and the decode
kernel's number of splits is fixed at capture for that length (each sequence spreads its
own length over them, so short contexts still use every split). A decode step with any
longer sequence runs eagerly (`fits_decode_graph`).
"""

from __future__ import annotations

import logging
import time
from typing import Optional

import numpy as np
import torch

from llmcore.layers.attention.metadata import AttentionMetadata

logger = logging.getLogger(__name__)


def capture_sizes(max_num_seqs: int) -> list[int]:
    sizes = [1, 2, 4] + list(range(8, max(max_num_seqs, 8) + 1, 8))
    out = sorted({s for s in sizes if s <= max_num_seqs} | {max_num_seqs})
    return out


def fits_decode_graph(num_prefill_seqs: int, num_batched_tokens: int, num_seqs: int,
                      max_seq_len: int, max_graph_batch: int, max_seq_len_to_capture: int) -> bool:
    """Whether a step may replay a decode graph: decode only, one token per sequence (a
    k-token verify step runs eager), a captured batch size, and no sequence longer than the
    graphs' context (vLLM's rule for --max-seq-len-to-capture)."""
    return (num_prefill_seqs == 0 and num_batched_tokens == num_seqs
            and 0 < num_seqs <= max_graph_batch and max_seq_len <= max_seq_len_to_capture)


class DecodeGraphRunner:
    def __init__(self, model: torch.nn.Module, kv_caches, device: torch.device, max_num_seqs: int,
                 max_seq_len_to_capture: int, block_size: int):
        self.model = model
        self.kv_caches = kv_caches
        self.device = device
        self.block_size = block_size
        self.max_seq_len = max_seq_len_to_capture
        self.sizes = capture_sizes(max_num_seqs)
        self.max_bs = self.sizes[-1]
        self.max_blocks = -(-max_seq_len_to_capture // block_size)
        B = self.max_bs
        kw = dict(device=device)
        self.input_ids = torch.zeros(B, dtype=torch.int64, **kw)
        self.positions = torch.zeros(B, dtype=torch.int64, **kw)
        self.slot_mapping = torch.full((B,), -1, dtype=torch.int64, **kw)
        self.seq_lens = torch.ones(B, dtype=torch.int32, **kw)
        self.context_lens = torch.zeros(B, dtype=torch.int32, **kw)
        self.query_start_loc = torch.arange(B + 1, dtype=torch.int32, **kw)
        self.block_tables = torch.zeros((B, self.max_blocks), dtype=torch.int32, **kw)
        # Pinned staging for the step inputs, two sets used in turn: a set is rewritten two
        # steps after its copies were queued, and the engine has waited for the step in
        # between, so the copies never block the host on the stream.
        self._staging = [self._make_staging(B) for _ in range(2)]
        self._turn = 0
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool = None

    def _meta(self, bs: int) -> AttentionMetadata:
        return AttentionMetadata(
            num_prefills=0, num_prefill_tokens=0, num_decode_tokens=bs,
            slot_mapping=self.slot_mapping[:bs], seq_lens=self.seq_lens[:bs],
            context_lens=self.context_lens[:bs], query_start_loc=self.query_start_loc[:bs + 1],
            block_tables=self.block_tables[:bs], max_query_len=1, max_seq_len=self.max_seq_len,
            block_size=self.block_size, seq_lens_host=np.ones(bs, dtype=np.int32),
            context_lens_host=np.zeros(bs, dtype=np.int32),
            query_start_loc_host=np.arange(bs + 1, dtype=np.int32))

    def _run(self, bs: int) -> torch.Tensor:
        return self.model(self.input_ids[:bs], self.positions[:bs], self.kv_caches, self._meta(bs))

    @torch.inference_mode()
    def capture(self) -> None:
        t0 = time.perf_counter()
        for bs in reversed(self.sizes):
            for _ in range(2):  # warm up (allocator, lazy init) outside the graph
                self._run(bs)
            torch.cuda.synchronize(self.device)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=self.pool):
                out = self._run(bs)
            if self.pool is None:
                self.pool = g.pool()
            self.graphs[bs] = g
            self.outputs[bs] = out
        torch.cuda.synchronize(self.device)
        logger.info("captured %d CUDA graphs for decode batch sizes %s in %.1f s",
                    len(self.sizes), self.sizes, time.perf_counter() - t0)
        self.capture_time_s = time.perf_counter() - t0

    def _make_staging(self, B: int) -> dict:
        pin = torch.cuda.is_available()
        return dict(
            input_ids=torch.zeros(B, dtype=torch.int64, pin_memory=pin),
            positions=torch.zeros(B, dtype=torch.int64, pin_memory=pin),
            slot_mapping=torch.zeros(B, dtype=torch.int64, pin_memory=pin),
            seq_lens=torch.zeros(B, dtype=torch.int32, pin_memory=pin),
            block_tables=torch.zeros((B, self.max_blocks), dtype=torch.int32, pin_memory=pin))

    def fits(self, plan) -> bool:
        n = int(plan.num_seqs)
        seq_lens = np.asarray(plan.seq_lens)
        return fits_decode_graph(int(plan.num_prefill_seqs), int(plan.num_batched_tokens), n,
                                 int(seq_lens[:n].max()) if n else 0, self.max_bs,
                                 self.max_seq_len)

    def padded_size(self, n: int) -> Optional[int]:
        for s in self.sizes:
            if s >= n:
                return s
        return None

    def run(self, plan, n: int, fix_inputs=None) -> torch.Tensor:
        """Decode-only plan with n sequences -> hidden states [n, hidden] (a view of a static
        buffer, valid until the next replay). fix_inputs(input_ids) may patch the token ids
        on the device before the replay."""
        bs = self.padded_size(n)
        st = self._staging[self._turn]
        self._turn ^= 1
        for name, dtype in (("input_ids", np.int64), ("positions", np.int64),
                            ("slot_mapping", np.int64), ("seq_lens", np.int32)):
            st[name][:n].numpy()[:] = np.asarray(getattr(plan, name), dtype=dtype)
            getattr(self, name)[:n].copy_(st[name][:n], non_blocking=True)
        bt = np.asarray(plan.block_tables, dtype=np.int32)
        w = min(bt.shape[1], self.max_blocks)
        st["block_tables"][:n, :w].numpy()[:] = bt[:n, :w]
        self.block_tables[:n, :w].copy_(st["block_tables"][:n, :w], non_blocking=True)
        if fix_inputs is not None:
            fix_inputs(self.input_ids[:n])
        if bs > n:
            self.slot_mapping[n:bs].fill_(-1)
            self.seq_lens[n:bs].fill_(1)
        self.graphs[bs].replay()
        return self.outputs[bs][:n]
