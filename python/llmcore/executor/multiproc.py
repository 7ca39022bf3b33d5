"""One worker process per tensor x pipeline parallel rank (the "mp" backend).

The engine core's process holds a multiprocessing Pipe to each worker (spawn context; the
Pipe pickles, between parent and child only — never a socket). Every call goes to every
rank and every rank answers it, in order; for a step, the answer of
ParallelConfig.output_rank (first rank of the last pipeline stage) is the result. The
ranks talk among themselves through torch.distributed (gloo on the CPU, NCCL on CUDA):
all-reduce/all-gather inside the layers, send/recv between pipeline stages. Every rank of
the last stage samples from the same all-gathered logits with the same seed, so their
sampling state stays identical without broadcasting tokens.

Weights are loaded after every rank has joined its groups, in waves of
--max-parallel-loading-workers ranks (executor.base.loading_waves).

No orphans: a worker exits when told to shut down, when its pipe closes, or when its
parent process dies (it watches the parent's sentinel); the executor's finalizer stops
the workers when the executor is dropped. A worker that dies or fails fails the executor:
the call that notices raises a RuntimeError naming the rank, and every later call too.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import traceback
import weakref
from typing import Any, Optional

from llmcore.executor.base import (Executor, RankReply, WorkerFailure, gather_replies,
                                   loading_waves)
from llmcore.model_runner.step_io import ModelRunnerOutput, StepInput

logger = logging.getLogger(__name__)

# How long a worker gets to exit after "shutdown" before it is killed.
_SHUTDOWN_GRACE_S = 30.0


class _RemoteOutput:
    """PendingRunnerOutput of a step that runs in the workers: get() waits for its answer."""

    def __init__(self, executor: "MultiprocExecutor"):
        self._executor = executor
        self._result: Optional[ModelRunnerOutput] = None

    def get(self) -> ModelRunnerOutput:
        while self._result is None:
            self._executor._read_next_step()
        return self._result


class MultiprocExecutor(Executor):
    def _init_executor(self) -> None:
        from llmcore.distributed.init import (check_visible_devices, default_backend,
                                              free_tcp_init_method)

        cfg, pc = self.config, self.config.parallel_config
        # Everything that can fail without a worker fails here, before one starts.
        cfg.validate()
        cfg.model_config.verify_tensor_parallel(pc.tensor_parallel_size)
        self.world_size = ws = pc.world_size
        self._output_rank = pc.output_rank
        check_visible_devices(cfg.device, ws)
        backend = default_backend(cfg.device)
        init_method = free_tcp_init_method()
        self._failure: Optional[str] = None
        self._unread: collections.deque = collections.deque()   # _RemoteOutput, send order
        self._procs: list = []
        self._conns: list = []
        # the finalizer holds the lists, not self: dropping the executor stops the workers
        self._finalizer = weakref.finalize(self, _stop_workers, self._procs, self._conns)
        ctx = mp.get_context("spawn")
        with _children_allowed():
            for rank in range(ws):
                parent_end, child_end = ctx.Pipe(duplex=True)
                proc = ctx.Process(target=_worker_main, name=f"llmcore-rank{rank}", daemon=True,
                                   args=(cfg, rank, ws, init_method, backend, self.eos_token_id,
                                         child_end))
                proc.start()
                child_end.close()
                self._procs.append(proc)
                self._conns.append(parent_end)
        try:
            self._read_replies()   # "ready" from every rank, once its groups are formed
            # (start, end) monotonic time of each rank's weight loading, rank order
            self.load_intervals: list = [None] * ws
            for wave in loading_waves(ws, pc.max_parallel_loading_workers):
                self._send(("load_model", (), {}), wave)
                for rank, interval in zip(wave, self._read_replies(wave)):
                    self.load_intervals[rank] = interval
        except WorkerFailure:
            self._finalizer()
            raise
        logger.info("mp executor: %d workers (%s, %s) ready", ws, backend, init_method)

    # ---------------------------------------------------------------- calls
    def collective_rpc(self, method: str, args: tuple = (), kwargs: Optional[dict] = None
                       ) -> list[Any]:
        self._drain()
        self._send((method, args, kwargs or {}))
        return self._read_replies()

    def execute_model(self, step: StepInput) -> _RemoteOutput:
        self._send(("execute_model", (step.portable(),), {}))
        out = _RemoteOutput(self)
        self._unread.append(out)
        return out

    def shutdown(self) -> None:
        if not self._finalizer.alive:
            return
        if self._failure is None:
            try:
                self._drain()
            except WorkerFailure:
                pass
        self._finalizer()

    @property
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    # ---------------------------------------------------------------- plumbing
    def _check(self) -> None:
        if self._failure is not None:
            raise WorkerFailure(self._failure)
        if not self._finalizer.alive:
            raise WorkerFailure("the mp executor is shut down")

    def _send(self, msg: tuple, ranks: Optional[list] = None) -> None:
        self._check()
        for rank in range(self.world_size) if ranks is None else ranks:
            conn = self._conns[rank]
            try:
                conn.send(msg)
            except (BrokenPipeError, EOFError, OSError):
                self._fail(f"worker rank {rank} is gone "
                           f"({self._exit_text(rank)})")

    def _drain(self) -> None:
        while self._unread:
            self._read_next_step()

    def _read_next_step(self) -> None:
        out = self._unread[0]
        results = self._read_replies()
        self._unread.popleft()
        out._result = results[self._output_rank]

    def _read_replies(self, ranks: Optional[list] = None) -> list:
        """One answer from every rank of `ranks` (default all; in that order), or
        WorkerFailure when a rank died or raised. Waits on the pipes and the processes'
        sentinels together."""
        self._check()
        ranks = list(range(self.world_size)) if ranks is None else ranks
        sentinels = {p.sentinel: rank for rank, p in enumerate(self._procs)}

        def next_replies(waiting: set, block: bool):
            conns = [self._conns[rank] for rank in waiting]
            for ready in mpc.wait(conns + list(sentinels)):
                if ready in sentinels:
                    rank = sentinels.pop(ready)
                    if rank in waiting and not self._conns[rank].poll():
                        yield self._died(rank)
                    continue
                rank = self._conns.index(ready)
                if rank not in waiting:
                    continue   # already answered; its sentinel may be handled above
                try:
                    status, value = ready.recv()
                except (EOFError, OSError):
                    yield self._died(rank)
                    continue
                yield RankReply(rank, value, None if status == "ok"
                                else f"worker rank {rank} failed: {value}")

        # a rank that raised answered: the others are waited for (they answer or die)
        return gather_replies(ranks, next_replies, self._fail, fail_fast=False)

    def _died(self, rank: int) -> RankReply:
        return RankReply(rank, error=f"worker rank {rank} died ({self._exit_text(rank)})",
                         fatal=True)

    def _exit_text(self, rank: int) -> str:
        p = self._procs[rank]
        p.join(5.0)   # the sentinel fired: the exit code is about to be set
        return f"pid {p.pid}, exit code {p.exitcode}"

    def _fail(self, message: str) -> None:
        """Stop every worker (the others may wait in a collective or a pipeline recv
        forever: killed at once, nothing of theirs is worth a grace period) and raise."""
        self._failure = message
        logger.error("mp executor: %s; stopping the workers", message)
        for p in self._procs:
            if p.is_alive():
                p.kill()
        self._finalizer()
        raise WorkerFailure(message)


@contextlib.contextmanager
def _children_allowed():
    """The engine-core process is a daemon (it dies with its front end), and multiprocessing
    refuses children to daemons only because it would not join them at exit. Our workers
    are joined by the finalizer and watch their parent, so lift the flag while starting."""
    me = mp.current_process()
    was = me.daemon
    if was:
        me.daemon = False
    try:
        yield
    finally:
        if was:
            me.daemon = True


def _stop_workers(procs: list, conns: list) -> None:
    """Ask each worker to exit, then kill what is left; closes the pipes."""
    for conn in conns:
        try:
            conn.send(("shutdown", (), {}))
        except (BrokenPipeError, EOFError, OSError):
            pass
    for p in procs:
        p.join(_SHUTDOWN_GRACE_S)
        if p.is_alive():
            logger.warning("worker pid %s did not exit; killing it", p.pid)
            p.kill()
            p.join()
    for conn in conns:
        conn.close()


# -------------------------------------------------------------------- worker side
def _watch_parent() -> None:
    """Exit this worker when the parent process dies, wherever the worker is blocked (a
    collective whose peer is gone included)."""
    import threading

    parent = mp.parent_process()
    if parent is None:
        return

    def watch() -> None:
        mpc.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="llmcore-parent-watch", daemon=True).start()


def _worker_main(config, rank: int, world_size: int, init_method: str, backend: str,
                 eos_token_id: Optional[int], conn) -> None:
    import signal

    os.environ["NCCL_NVLS_ENABLE"] = "0"   # before NCCL reads it: NVLink multicast stays off
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent handles Ctrl-C and stops us
    _watch_parent()
    try:
        from llmcore.worker.rank_worker import create_rank_worker

        # joins its tensor / pipeline groups (with every other rank); weights load later,
        # in the executor's --max-parallel-loading-workers waves
        worker = create_rank_worker(config, rank, world_size, init_method, backend, eos_token_id)
        conn.send(("ok", None))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, then exit
        _reply_error(conn, rank, e)
        return
    try:
        _serve(worker, rank, conn)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    # Nothing of this process outlives it: skip the interpreter's teardown of torch (seconds
    # on a busy host, which the parent's shutdown would wait for).
    logging.shutdown()
    conn.close()
    os._exit(0)


def _serve(worker, rank: int, conn) -> None:
    from llmcore.worker.rank_worker import run_step

    while True:
        try:
            method, args, kwargs = conn.recv()
        except (EOFError, OSError):
            return   # the parent closed the pipe
        try:
            if method == "execute_model":
                result = run_step(worker, *args)   # one copy travels: the output rank's
            else:
                result = getattr(worker, method)(*args, **kwargs)
            conn.send(("ok", result))
        except BaseException as e:  # noqa: BLE001
            _reply_error(conn, rank, e)
            return
        if method == "shutdown":
            return


def _reply_error(conn, rank: int, e: BaseException) -> None:
    text = f"{type(e).__name__}: {e}\n{''.join(traceback.format_exception(e))}"
    try:
        conn.send(("error", text))
    except (BrokenPipeError, EOFError, OSError):
        pass
