"""Runs a test body on gloo ranks, each in its own spawned process (one thread each)."""

from __future__ import annotations

import multiprocessing as mp
import traceback
from typing import Callable

import torch

from llmcore.distributed import free_tcp_init_method, init_distributed


def run_gloo_ranks(body: Callable[[int, int, str], None], world_size: int = 2) -> None:
    """body(rank, world_size, init_method) on every rank, inside an initialized gloo
    process group; fails with the ranks' tracebacks unless every rank returned and exited 0.
    `body` must be importable by name (a module-level function of the test file)."""
    ctx = mp.get_context("spawn")
    init_method = free_tcp_init_method()
    pipes, procs = [], []
    for rank in range(world_size):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_rank_main, args=(body, rank, world_size, init_method, child),
                        daemon=True)
        p.start()
        child.close()
        pipes.append(parent)
        procs.append(p)
    try:
        results = [c.recv() for c in pipes]
    finally:
        for p in procs:
            p.join()
    assert results == ["ok"] * world_size, results
    assert [p.exitcode for p in procs] == [0] * world_size


def _rank_main(body, rank: int, world_size: int, init_method: str, conn) -> None:
    try:
        torch.set_num_threads(1)
        init_distributed(rank, world_size, init_method, "gloo")
        body(rank, world_size, init_method)
        torch.distributed.destroy_process_group()
        conn.send("ok")
    except BaseException:  # noqa: BLE001 - the parent reports it
        conn.send(traceback.format_exc())
