"""model_runner/pooler.py alone: chunk-wise MEAN/CLS partial results, restarts (a prompt
recomputed after preemption), LAST rows, normalisation, per-sequence state released."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmcore.model_runner.pooler import Pooler
from llmcore.model_runner.step_io import PoolingJob


def _job(seq_id, row_start, n, first, last, kind, normalize=False):
    return PoolingJob(seq_id, row_start, n, first, last, kind, normalize)


def test_chunks_restart_and_mixed_batch():
    torch.manual_seed(0)
    a = torch.randn(10, 8)          # seq 1's prompt (MEAN), 10 positions
    b = torch.randn(5, 8)           # seq 2's prompt (CLS)
    c = torch.randn(3, 8)           # seq 3 (LAST, normalised)
    p = Pooler()
    # step 1: a[0:4], b[0:2]
    assert p.pool(torch.cat([a[:4], b[:2]]), [_job(1, 0, 4, 0, False, "MEAN"),
                                              _job(2, 4, 2, 0, False, "CLS")]) is None
    assert p.num_partial() == 2
    # seq 1 preempted and recomputed: starts again at position 0 (the old sum is dropped)
    assert p.pool(a[:6], [_job(1, 0, 6, 0, False, "MEAN")]) is None
    # step 3: the rest of a and b, and all of c, in one batch
    hidden = torch.cat([c, a[6:], b[2:]])
    out = p.pool(hidden, [_job(3, 0, 3, 0, True, "LAST", True), _job(1, 3, 4, 6, True, "MEAN"),
                          _job(2, 7, 3, 2, True, "CLS")])
    torch.testing.assert_close(out[0], F.normalize(c[-1], dim=-1))
    torch.testing.assert_close(out[1], a.mean(0))
    torch.testing.assert_close(out[2], b[0])
    assert p.num_partial() == 0


def test_forget_drops_partial_state():
    p = Pooler()
    p.pool(torch.ones(4, 2), [_job(7, 0, 4, 0, False, "MEAN")])
    assert p.num_partial() == 1
    p.forget(7)
    p.forget(8)   # unknown ids are fine
    assert p.num_partial() == 0
