"""The bitmask application against a per-token reference, on both CPU paths (the C++
kernel in llmcore._core and the torch-native reference in llmcore.ops.reference), with row
subsets and a padded vocabulary. The CUDA kernel: tests/kernels/test_token_bitmask.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmcore.ops import reference
from llmcore.structured_output import bitmask as bm_mod
from llmcore.structured_output.backend import allow_token, bitmask_width


def _reference(logits, bitmask, rows, vocab_size):
    out = logits.clone()
    bits = bitmask.numpy().view(np.uint32)
    for i, r in enumerate(rows):
        for t in range(logits.shape[1]):
            word = t // 32
            ok = word < bits.shape[1] and (bits[i, word] >> (t % 32)) & 1
            if not ok:
                out[r, t] = float("-inf")
    return out


@pytest.mark.parametrize("path", ["cpu_kernel", "reference"])
@pytest.mark.parametrize("rows", [None, [1, 3], [4, 0, 2]])
def test_apply_matches_reference(path, rows):
    apply = bm_mod.apply_token_bitmask_ if path == "cpu_kernel" else \
        reference.apply_token_bitmask
    g = torch.Generator().manual_seed(0)
    V = 100                                   # not a multiple of 32: the last word is partial
    logits = torch.randn(5, V, generator=g)
    n = 5 if rows is None else len(rows)
    bitmask = torch.randint(-2**31, 2**31 - 1, (n, bitmask_width(V)), dtype=torch.int32,
                            generator=g)
    expected = _reference(logits, bitmask, range(n) if rows is None else rows, V)
    got = logits.clone()
    apply(got, bitmask, None if rows is None else torch.tensor(rows))
    assert torch.equal(got, expected)
    untouched = set(range(5)) - set(range(n) if rows is None else rows)
    for r in untouched:
        assert torch.equal(got[r], logits[r])


@pytest.mark.parametrize("apply", [bm_mod.apply_token_bitmask_,
                                   reference.apply_token_bitmask])
def test_padded_vocab_masked_by_narrow_bitmask(apply):
    """Logits wider than the bitmask (padded vocabulary): the padding is disallowed."""
    logits = torch.zeros(1, 70)
    bitmask = torch.full((1, 1), -1, dtype=torch.int32)     # allows tokens 0..31 only
    apply(logits, bitmask)
    assert torch.isfinite(logits[0, :32]).all() and torch.isinf(logits[0, 32:]).all()


def test_allow_token_sets_high_bit():
    row = np.zeros(2, dtype=np.int32)
    allow_token(row, 31)
    allow_token(row, 32)
    assert row.view(np.uint32).tolist() == [1 << 31, 1]


def test_cpu_kernel_on_a_strided_view_and_bad_rows():
    """A view with a row stride larger than the vocabulary (logits[:, :V] of a wider buffer)
    is masked in place; rows outside the logits are refused, not written."""
    base = torch.randn(3, 80)
    view = base[:, :70]
    bitmask = torch.zeros((1, bitmask_width(70)), dtype=torch.int32)
    bitmask[0, 0] = 1                                    # token 0 only
    bm_mod.apply_token_bitmask_(view, bitmask, torch.tensor([2]))
    assert torch.isfinite(base[2, 0]) and torch.isinf(base[2, 1:70]).all()
    assert torch.isfinite(base[2, 70:]).all() and torch.isfinite(base[:2]).all()
    with pytest.raises(IndexError):
        bm_mod.apply_token_bitmask_(view, bitmask, torch.tensor([3]))
