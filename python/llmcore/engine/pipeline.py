"""A launched engine step whose sampled tokens are still on the device (async scheduling).

The sampler's outputs are copied to pinned host memory without blocking and an event marks
their arrival; the engine reads them one step later, while the device runs the next step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


def _to_host(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    # Into pinned memory with copy_(non_blocking=True): asynchronous. (t.to("cpu",
    # non_blocking=True) lands in pageable memory and synchronizes the stream.)
    if t is None or t.device.type != "cuda":
        return t
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    return host


@dataclass
class InFlightStep:
    normal: list                  # [(RequestState, SeqState)], one per sampled row
    token_ids: torch.Tensor       # [rows] sampled ids on the device (next step's inputs)
    row_of_seq: dict              # seq_id -> row, for sequences given a placeholder token
    len_of_seq: dict              # seq_id -> its token count including the placeholder
    host: tuple                   # host copies: ids, logprobs, topk ids, topk logprobs, ranks
    event: Optional[torch.cuda.Event]

    @classmethod
    def launch(cls, normal: list, out, row_of_seq: dict, len_of_seq: dict) -> "InFlightStep":
        host = tuple(_to_host(t) for t in (out.token_ids, out.logprobs, out.topk_ids,
                                           out.topk_logprobs, out.ranks))
        event = None
        if out.token_ids.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        return cls(normal, out.token_ids, row_of_seq, len_of_seq, host, event)

    def host_values(self):
        """(token ids, logprobs or None, (topk ids, topk logprobs, ranks) or None) as lists;
        waits for this step's copies only, not for later work on the stream."""
        if self.event is not None:
            self.event.synchronize()
        tok, lp, top_ids, top_lps, ranks = self.host
        top = None
        if top_ids is not None:
            top = (top_ids.tolist(), top_lps.tolist(), ranks.tolist())
        return tok.tolist(), (lp.tolist() if lp is not None else None), top
