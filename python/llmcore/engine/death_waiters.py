"""Futures awaited on other threads' event loops (`wait_for_death()`), resolved from the
thread that saw the engine die."""

from __future__ import annotations

import asyncio
from typing import Any, Iterable


def _resolve(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def resolve_waiters(waiters: Iterable[tuple], value: Any) -> None:
    """Resolve each (loop, future) with `value` on its own loop; closed loops are skipped
    (nobody awaits there any more)."""
    for loop, fut in waiters:
        try:
            loop.call_soon_threadsafe(_resolve, fut, value)
        except RuntimeError:
            pass
