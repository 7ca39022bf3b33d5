"""A tiny stand-in for the scheduler + model runner, for model tests: owns a paged KV cache,
allocates blocks per sequence, and turns (sequences, new tokens) into AttentionMetadata."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from llmcore.layers.attention.metadata import AttentionMetadata


def build_metadata(items: list[tuple[list[int], int, int]], num_prefills: int, block_size: int,
                   device="cpu") -> tuple[AttentionMetadata, torch.Tensor]:
    """items: (block ids of the seq, context_len, num_new_tokens) per sequence, prefills
    first. -> (metadata, positions)."""
    ctx = np.array([c for _, c, _ in items], dtype=np.int32)
    new = np.array([n for _, _, n in items], dtype=np.int32)
    seq_lens = ctx + new
    qsl = np.zeros(len(items) + 1, dtype=np.int32)
    qsl[1:] = np.cumsum(new)
    max_blocks = max(len(b) for b, _, _ in items)
    bt = np.zeros((len(items), max_blocks), dtype=np.int32)
    slots, positions = [], []
    for i, (blocks, c, n) in enumerate(items):
        bt[i, :len(blocks)] = blocks
        pos = np.arange(c, c + n)
        positions.append(pos)
        slots.append(np.asarray(blocks, dtype=np.int64)[pos // block_size] * block_size
                     + pos % block_size)
    num_prefill_tokens = int(new[:num_prefills].sum())
    md = AttentionMetadata(
        num_prefills=num_prefills, num_prefill_tokens=num_prefill_tokens,
        num_decode_tokens=int(new[num_prefills:].sum()),
        slot_mapping=torch.from_numpy(np.concatenate(slots)).to(device),
        seq_lens=torch.from_numpy(seq_lens).to(device),
        context_lens=torch.from_numpy(ctx).to(device),
        query_start_loc=torch.from_numpy(qsl).to(device),
        block_tables=torch.from_numpy(bt).to(device),
        max_query_len=int(new.max()), max_seq_len=int(seq_lens.max()), block_size=block_size,
        seq_lens_host=seq_lens, context_lens_host=ctx, query_start_loc_host=qsl)
    return md, torch.from_numpy(np.concatenate(positions)).to(device)


class PagedRunner:
    """Runs a model over a paged KV cache. Blocks are handed out in a scrambled order so
    that block tables are not contiguous."""

    def __init__(self, model, num_blocks: int = 256, block_size: int = 16,
                 device="cpu", seed: int = 0):
        num_layers, kv_heads, head_dim = model.kv_cache_spec()
        dtype = next(model.parameters()).dtype
        shape = (num_blocks, block_size, kv_heads, head_dim)
        self.model = model
        self.block_size = block_size
        self.device = device
        self.kv_caches = [(torch.zeros(shape, dtype=dtype, device=device),
                           torch.zeros(shape, dtype=dtype, device=device))
                          for _ in range(num_layers)]
        rng = np.random.default_rng(seed)
        self.free = list(rng.permutation(num_blocks))
        self.blocks: dict = {}
        self.lens: dict = {}

    def _ensure(self, sid, new_len: int) -> list[int]:
        blocks = self.blocks.setdefault(sid, [])
        while len(blocks) * self.block_size < new_len:
            blocks.append(int(self.free.pop()))
        return blocks

    def step(self, prefills: list[tuple[object, list[int]]],
             decodes: list[tuple[object, int]] = (),
             logits_rows: Optional[str] = "last") -> torch.Tensor:
        """prefills: (seq id, new tokens) chunks (a seq's first chunk or a continuation);
        decodes: (seq id, token). -> float32 logits of each item's last token, in order."""
        items, ids = [], []
        for sid, toks in list(prefills) + [(s, [t]) for s, t in decodes]:
            c = self.lens.get(sid, 0)
            items.append((self._ensure(sid, c + len(toks)), c, len(toks)))
            ids.extend(toks)
            self.lens[sid] = c + len(toks)
        md, positions = build_metadata(items, len(prefills), self.block_size, self.device)
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            hidden = self.model(input_ids, positions, self.kv_caches, md)
            rows = md.query_start_loc[1:].long() - 1
            return self.model.compute_logits(hidden.index_select(0, rows))

    def free_seq(self, sid) -> None:
        self.free.extend(self.blocks.pop(sid, []))
        self.lens.pop(sid, None)

    def greedy(self, prompts: list[list[int]], max_new_tokens: int,
               return_logits: bool = False):
        """All prompts prefilled in one step, then batched decode steps; greedy argmax."""
        sids = [("g", i) for i in range(len(prompts))]
        logits = self.step(list(zip(sids, prompts)))
        outs = [[] for _ in prompts]
        all_logits = [[] for _ in prompts]
        for step in range(max_new_tokens):
            nxt = logits.argmax(-1).tolist()
            for i, t in enumerate(nxt):
                outs[i].append(t)
                all_logits[i].append(logits[i])
            if step + 1 == max_new_tokens:
                break
            logits = self.step([], list(zip(sids, nxt)))
        for s in sids:
            self.free_seq(s)
        return (outs, all_logits) if return_logits else outs
