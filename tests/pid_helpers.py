"""Waiting on processes of a test (workers, engine cores, Ray actors) by pid."""

from __future__ import annotations

import os
import select


def alive(pid: int) -> bool:
    """Running (a zombie, exited but not yet reaped by its new parent, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def wait_exited(pids: list) -> None:
    """Until every pid has exited: pidfds turn readable at exit (an event, no polling)."""
    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except ProcessLookupError:
            pass   # already gone
    try:
        pending = set(fds)
        while pending:
            ready, _, _ = select.select(list(pending), [], [])
            pending -= set(ready)
    finally:
        for fd in fds:
            os.close(fd)
