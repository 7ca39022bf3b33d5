"""Applying a token bitmask to logits on their device, after the forward (and after any
CUDA graph replay): one masked fill over the constrained rows; other rows are untouched."""

from __future__ import annotations

from typing import Optional

import torch

_SHIFTS: dict = {}


def _shifts(device: torch.device) -> torch.Tensor:
    t = _SHIFTS.get(device)
    if t is None:
        t = _SHIFTS[device] = torch.arange(32, dtype=torch.int32, device=device)
    return t


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """int32 [n, ceil(V/32)] -> bool [n, V]: bit i of word j allows token 32 * j + i."""
    bits = (bitmask.unsqueeze(-1) >> _shifts(bitmask.device)) & 1
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab_size].bool()


def apply_token_bitmask_(logits: torch.Tensor, bitmask: torch.Tensor,
                         rows: Optional[torch.Tensor] = None) -> None:
    """In place: logits[rows[i], t] = -inf where bit t of bitmask[i] is 0. logits: [N, V]
    float; bitmask: int32 [n, >= ceil(V/32)] on logits' device; rows: int64 [n] (None: the
    first n rows). Tokens past the bitmask's width (a padded vocabulary) are masked too."""
    n, V = bitmask.shape[0], logits.shape[1]
    if n == 0:
        return
    allowed = unpack_bitmask(bitmask, V)
    if allowed.shape[1] < V:   # bitmask narrower than the logits: the rest is disallowed
        allowed = torch.nn.functional.pad(allowed, (0, V - allowed.shape[1]), value=False)
    if rows is None and n == logits.shape[0]:
        logits.masked_fill_(~allowed, float("-inf"))
        return
    if rows is None:
        rows = torch.arange(n, device=logits.device)
    sub = logits.index_select(0, rows)
    logits.index_copy_(0, rows, sub.masked_fill_(~allowed, float("-inf")))
