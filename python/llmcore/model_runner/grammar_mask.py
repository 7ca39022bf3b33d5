"""Guided steps whose mask the device waits for, instead of the host waiting to launch.

Under async scheduling a guided step's token bitmask depends on the previous step's tokens,
which the host learns while the device runs this step's forward. Without this channel the
host launches the sampling only once the mask is filled, and the next forward after that:
the device idles while the host schedules and prepares the next step. With it, the runner
queues at launch time, right behind the forward:

    wait_host_flag(flag >= n) -> copy pinned mask slot n % 2 -> apply -> sample -> copies

and the host, once it has the mask, writes the slot and sets the flag (`publish`). The next
step is queued behind all of it, so the device runs forward, sampling and the next forward
back to back, and the mask is filled while the forward runs.

Opt-in (`--guided-decoding-overlap`, `StructuredOutputConfig.overlap_mask_wait`): on an H100
it raised guided throughput by about a tenth on SmolLM2 (benchmarks/RESULTS.md), and a
kernel CUDA loads lazily at its first launch behind a held stream would stall the step
until the wait's timeout; the runner samples the first step of each kind after the mask
(so its kernels are loaded before any hold), which covers the kernels the channel queues.

The one hazard: a host call that waits for the device (a sync) between the launch and the
publish would wait forever (the device waits for the host). The sampler says which batches
it launches without one (`Sampler.launch_is_sync_free`); the launch runs under torch's
sync-debug "error" mode, so an unforeseen sync raises before it blocks and the step falls
back to sampling after the mask; and the device gives up after `timeout_ms`, which the step's
output reports as an error instead of a wrong token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from llmcore import ops
from llmcore.structured_output.bitmask import apply_token_bitmask_


@dataclass
class MaskTicket:
    """One launched step's mask: the host fills `host` (its rows) and publishes `seq`."""

    seq: int
    host: np.ndarray                 # int32 [rows, width], a view of a pinned slot
    published: bool = False


class HostMaskChannel:
    """Pinned mask slots + a pinned flag the device waits on (see the module docstring)."""

    def __init__(self, device: torch.device, width: int, rows: int = 64,
                 timeout_ms: int = 60_000):
        self.device = device
        self.width = int(width)
        self.timeout_ms = int(timeout_ms)
        # a mapped allocation of its own (a flag in torch's pinned pool works too: the
        # H100 failures blamed on it came from CUDA's lazy loading, see the module docstring)
        self._flag = ops.MappedHostFlag()
        self._flag_np = self._flag.value
        self._flag_dev = self._flag.device_ptr
        self.timed_out = torch.zeros(1, dtype=torch.int32, device=device)
        self._seq = 0
        self._open: Optional[MaskTicket] = None
        self._alloc(rows)

    def _alloc(self, rows: int) -> None:
        # called only while no ticket is open: nothing on the device reads the old buffers
        self._rows = int(rows)
        self._slots = [torch.full((rows, self.width), -1, dtype=torch.int32, pin_memory=True)
                       for _ in range(2)]
        self._device_mask = torch.empty((rows, self.width), dtype=torch.int32, device=self.device)

    def launch(self, logits: torch.Tensor, rows: Optional[torch.Tensor], n: int) -> MaskTicket:
        """Queue on the current stream: wait for this ticket's publish, copy its mask to the
        device, apply it to `logits` (rows: int64 device indices, None: 0..n-1)."""
        if self._open is not None:
            raise RuntimeError("a guided step's mask is still unpublished")
        if n > self._rows:
            self._alloc(max(n, 2 * self._rows))
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        slot = self._slots[self._seq & 1]
        ops.wait_host_flag(self._flag_dev, self._seq, self.device, self.timeout_ms, self.timed_out)
        dev = self._device_mask[:n]
        dev.copy_(slot[:n], non_blocking=True)
        apply_token_bitmask_(logits, dev, rows)
        self._open = MaskTicket(self._seq, slot[:n].numpy())
        return self._open

    def publish(self, ticket: MaskTicket, bitmask: Optional[np.ndarray]) -> None:
        """Hand the device this ticket's mask (None: allow everything) and release it. The
        slot's data is written before the flag: x86 stores become visible in program order,
        and the device reads the slot only after it sees the flag."""
        if ticket is not self._open or ticket.published:
            raise RuntimeError("publish of a mask ticket that is not the open one")
        if bitmask is None:
            ticket.host.fill(-1)
        else:
            if bitmask.shape != ticket.host.shape:
                raise ValueError(f"grammar bitmask of shape {bitmask.shape}, the step launched "
                                 f"{ticket.host.shape}")
            np.copyto(ticket.host, bitmask)
        ticket.published = True
        self._open = None
        self._flag_np[0] = ticket.seq

    def abandon(self) -> None:
        """Release an open ticket with an allow-all mask (the launch failed half way)."""
        if self._open is not None:
            self.publish(self._open, None)


class sync_debug_error:
    """torch.cuda's sync-debug mode "error" for the block (restored after): a call that
    would wait for the device raises instead."""

    def __enter__(self):
        self._prev = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode(self._prev)
        return False
