"""Reading one request's stream of cumulative RequestOutput snapshots (and errors)."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator


async def newest_snapshots(q: asyncio.Queue) -> AsyncIterator:
    """Yield the snapshots put on `q` until a finished one; raise an error put on it.

    Outputs are cumulative snapshots: when the consumer has fallen behind, the newest
    supersedes those queued before it, so one chunk carries several steps' tokens (as in
    vLLM) instead of the event loop sending every stale snapshot. An error is delivered
    after the snapshots queued before it, and a finished snapshot is never skipped."""
    pending = None
    while True:
        if pending is not None:
            item, pending = pending, None
        else:
            item = await q.get()
        while not isinstance(item, BaseException) and not item.finished and not q.empty():
            nxt = q.get_nowait()
            if isinstance(nxt, BaseException):
                pending = nxt  # deliver what came before the error first
                break
            item = nxt
        if isinstance(item, BaseException):
            raise item
        yield item
        if item.finished:
            return
