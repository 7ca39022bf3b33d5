"""Where the engine core runs, seen from its client: a `spawn`ed process of this host
(`ProcessCoreLauncher`) or a Ray actor (core_ray.RayCoreLauncher, --engine-use-ray).

The client binds its two ZeroMQ sockets and the core connects to them; a launcher starts
the core with those addresses, reports its ReadyMessage (or an EngineStartupError), tells
when it is gone (`wait_exit`, on the client's death-watch thread) and stops it.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
from abc import ABC, abstractmethod
from typing import Optional

import msgspec

from llmcore.engine.core_errors import EngineStartupError
from llmcore.engine.core_proc import ReadyMessage, run_engine_core

logger = logging.getLogger(__name__)


class CoreLauncher(ABC):
    """Starts one engine core and watches it; `stop()` is idempotent and also the
    client's finalizer."""

    # why the core is gone, for EngineDeadError; exit code None: unknown
    death_detail = "engine core process died"
    exit_code: Optional[int] = None

    def place(self) -> Optional[str]:
        """Before the client binds: None when the core runs on this host (ipc or
        loopback sockets), else the IP of this host that the core can reach."""
        return None

    @abstractmethod
    def start(self, input_addr: str, output_addr: str) -> None:
        """Start building the core; it connects to these addresses once built."""

    @abstractmethod
    def wait_ready(self, timeout_s: Optional[float]) -> ReadyMessage:
        """The core's ok ReadyMessage, or EngineStartupError (None: wait while it lives)."""

    @abstractmethod
    def wait_exit(self) -> None:
        """Blocks until the core is gone (then exit_code and death_detail are final)."""

    @abstractmethod
    def is_alive(self) -> bool:
        """Started and not gone yet."""

    @abstractmethod
    def join(self, timeout_s: float) -> None:
        """Waits at most timeout_s for the core to end (after SHUTDOWN was sent)."""

    @abstractmethod
    def stop(self) -> None:
        """Ends the core now if it still runs (terminate, then kill) and releases it."""

    def close(self) -> None:
        """Releases what the client kept open to the core (after stop)."""


class ProcessCoreLauncher(CoreLauncher):
    """The core in a `spawn`ed daemon process. Start-up arguments travel through the spawn
    start, the ReadyMessage comes back on a pipe, and the pipe then stays open: its EOF
    tells the core that the front end is gone."""

    def __init__(self, core_factory: str, factory_args: tuple, shutdown_timeout_s: float):
        self._factory = core_factory
        self._args = tuple(factory_args)
        self._shutdown_timeout_s = shutdown_timeout_s
        self._proc: Optional[multiprocessing.process.BaseProcess] = None
        self._conn = None

    @property
    def pid(self) -> Optional[int]:
        return None if self._proc is None else self._proc.pid

    @property
    def exit_code(self) -> Optional[int]:  # type: ignore[override]
        return None if self._proc is None else self._proc.exitcode

    def start(self, input_addr: str, output_addr: str) -> None:
        spawn = multiprocessing.get_context("spawn")
        parent_conn, child_conn = spawn.Pipe(duplex=True)
        self._proc = spawn.Process(
            target=run_engine_core, name="llmcore-engine-core", daemon=True,
            args=(self._factory, self._args, input_addr, output_addr, child_conn))
        try:
            self._proc.start()
        finally:
            child_conn.close()
        self._conn = parent_conn   # kept open: its EOF tells the core we are gone

    def wait_ready(self, timeout_s: Optional[float]) -> ReadyMessage:
        ready = multiprocessing.connection.wait([self._conn, self._proc.sentinel], timeout_s)
        if not ready:
            raise EngineStartupError(f"engine core not ready after {timeout_s} s")
        if self._conn in ready:
            try:
                msg = msgspec.msgpack.decode(self._conn.recv_bytes(), type=ReadyMessage)
            except (EOFError, OSError, msgspec.DecodeError):
                msg = None
            if msg is not None and msg.ok:
                return msg
            if msg is not None:
                raise EngineStartupError(f"engine core failed to start: {msg.error}")
        self._proc.join(self._shutdown_timeout_s)
        raise EngineStartupError(
            f"engine core process exited during start-up (exit code {self._proc.exitcode})")

    def wait_exit(self) -> None:
        multiprocessing.connection.wait([self._proc.sentinel])
        self._proc.join()

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def join(self, timeout_s: float) -> None:
        self._proc.join(timeout_s)

    def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.is_alive():
            proc.terminate()
            proc.join(2.0)
        if proc.is_alive():
            proc.kill()
            proc.join()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
