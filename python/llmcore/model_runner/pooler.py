"""Pooling of the final hidden states (after the model's final norm, before the LM head)
into one vector per prompt: the embeddings of `--task embed`.

A prompt may be prefilled over several steps (chunked prefill), so MEAN and CLS keep a
per-sequence partial result between steps: the running float32 sum and count of the
positions seen (MEAN), the first position's state (CLS). A chunk that starts at position
0 starts over, which also covers a prompt recomputed after preemption. Every position is
computed for them: the engine core turns prefix caching off for such requests (a cache
hit would skip positions). LAST needs only the final chunk's last row, which the
scheduler always computes, so LAST requests keep prefix caching.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from llmcore.model_runner.step_io import PoolingJob


class Pooler:
    def __init__(self):
        # seq_id -> (float32 sum [H], positions summed) for MEAN; -> ([H], 1) for CLS
        self._partial: dict[int, tuple[torch.Tensor, int]] = {}

    def forget(self, seq_id: int) -> None:
        self._partial.pop(seq_id, None)

    def num_partial(self) -> int:
        return len(self._partial)

    def pool(self, hidden: torch.Tensor, jobs: list[PoolingJob]) -> Optional[torch.Tensor]:
        """float32 [jobs with `last`, H] (in job order), or None when no prompt ends here."""
        self._accumulate(hidden, [j for j in jobs if j.pooling_type != "LAST"])
        done = [j for j in jobs if j.last]
        if not done:
            return None
        vecs = torch.empty((len(done), hidden.shape[1]), dtype=torch.float32, device=hidden.device)
        last_at = [i for i, j in enumerate(done) if j.pooling_type == "LAST"]
        if last_at:
            rows = torch.as_tensor([done[i].row_start + done[i].num_tokens - 1 for i in last_at],
                                   dtype=torch.int64, device=hidden.device)
            vecs[torch.as_tensor(last_at, device=hidden.device)] = \
                hidden.index_select(0, rows).float()
        for i, j in enumerate(done):
            if j.pooling_type != "LAST":
                total, count = self._partial.pop(j.seq_id)
                vecs[i] = total / count
        norm_at = [i for i, j in enumerate(done) if j.normalize]
        if norm_at:
            idx = torch.as_tensor(norm_at, device=hidden.device)
            vecs[idx] = F.normalize(vecs.index_select(0, idx), p=2.0, dim=-1)
        return vecs

    def _accumulate(self, hidden: torch.Tensor, jobs: list[PoolingJob]) -> None:
        if not jobs:
            return
        for j in jobs:
            if j.first_pos == 0:
                self._partial.pop(j.seq_id, None)   # a (re)started prompt
        cls_jobs = [j for j in jobs if j.pooling_type == "CLS" and j.first_pos == 0]
        if cls_jobs:
            rows = torch.as_tensor([j.row_start for j in cls_jobs], dtype=torch.int64,
                                   device=hidden.device)
            first = hidden.index_select(0, rows).float()
            for k, j in enumerate(cls_jobs):
                self._partial[j.seq_id] = (first[k], 1)
        mean_jobs = [j for j in jobs if j.pooling_type == "MEAN"]
        if mean_jobs:
            # one segment sum for every MEAN chunk of the step
            rows = np.concatenate([np.arange(j.row_start, j.row_start + j.num_tokens)
                                   for j in mean_jobs])
            seg = np.repeat(np.arange(len(mean_jobs)), [j.num_tokens for j in mean_jobs])
            sums = torch.zeros((len(mean_jobs), hidden.shape[1]), dtype=torch.float32,
                               device=hidden.device)
            sums.index_add_(0, torch.as_tensor(seg, device=hidden.device),
                            hidden.index_select(0, torch.as_tensor(rows, device=hidden.device))
                            .float())
            for k, j in enumerate(mean_jobs):
                prev = self._partial.get(j.seq_id)
                if prev is None:
                    self._partial[j.seq_id] = (sums[k], j.num_tokens)
                else:
                    self._partial[j.seq_id] = (prev[0] + sums[k], prev[1] + j.num_tokens)
