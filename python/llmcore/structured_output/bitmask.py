"""Applying a token bitmask to logits on their device, after the forward (and after any
CUDA graph replay): disallowed tokens of the constrained rows -> -inf; other rows are
untouched.

One kernel per device: on a GPU `llmcore.ops.apply_token_bitmask` (one thread per 32-token
word, all-ones words skipped), on the CPU the C++ loop in `llmcore._core` (fp32, word
skipping, OpenMP over rows: ~0.3 ms at 64 x 49k on two cores where xgrammar's CPU kernel
took ~10 ms). Anything else (another dtype or device, no compiled module) takes the
torch-native reference in `llmcore.ops.reference`."""

from __future__ import annotations

from typing import Optional

import torch

from llmcore.ops import reference


def apply_token_bitmask_(logits: torch.Tensor, bitmask: torch.Tensor,
                         rows: Optional[torch.Tensor] = None) -> None:
    """In place: logits[rows[i], t] = -inf where bit t of bitmask[i] is 0. logits: [N, V]
    float; bitmask: int32 [n, >= ceil(V/32)] on logits' device; rows: int64 [n] (None: the
    first n rows). Tokens past the bitmask's width (a padded vocabulary) are masked too."""
    n, V = bitmask.shape[0], logits.shape[1]
    if n == 0:
        return
    if rows is not None and rows.dtype != torch.int64:
        rows = rows.to(torch.int64)
    if logits.device.type == "cuda":
        from llmcore import ops
        if ops.cuda_available() and logits.stride(1) == 1:
            ops.apply_token_bitmask(logits, bitmask.contiguous(), rows)
            return
    elif logits.dtype == torch.float32 and logits.stride(1) == 1:
        _apply_cpu_(logits, bitmask, rows)
        return
    reference.apply_token_bitmask(logits, bitmask, rows)


def _apply_cpu_(logits: torch.Tensor, bitmask: torch.Tensor, rows: Optional[torch.Tensor]) -> None:
    from llmcore._core import apply_token_bitmask_f32
    bitmask = bitmask.contiguous()
    if rows is not None:
        rows = rows.contiguous()
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= logits.shape[0]):
            raise IndexError(f"bitmask rows out of range for {logits.shape[0]} logits rows")
    elif bitmask.shape[0] > logits.shape[0]:
        raise IndexError(f"bitmask has {bitmask.shape[0]} rows, logits only {logits.shape[0]}")
    apply_token_bitmask_f32(logits.data_ptr(), logits.stride(0), bitmask.data_ptr(),
                            bitmask.shape[1], 0 if rows is None else rows.data_ptr(),
                            bitmask.shape[0], logits.shape[1], torch.get_num_threads())
