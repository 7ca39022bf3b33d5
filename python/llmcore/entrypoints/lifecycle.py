"""What the HTTP and gRPC front ends do around the engine's life, written once for both.

`ServerLifecycle(engine)` refuses new requests while the server drains (SIGTERM) or once
the engine is dead, counts the requests in flight (so a drain knows when it is done), and
ends the in-flight ones with a `RequestTerminated` error when the engine dies or the drain
times out. It relies only on the EngineClient protocol (`errored`, `wait_for_death`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterator, Optional

logger = logging.getLogger("llmcore.entrypoints.lifecycle")

ENGINE_DEAD = "engine_dead"
SHUTTING_DOWN = "shutting_down"

DEAD_MESSAGE = "the engine is dead; the server must be restarted"
DRAINING_MESSAGE = "the server is shutting down and accepts no new requests"
DRAIN_TIMEOUT_MESSAGE = ("the server shut down before this request finished "
                         "(--shutdown-timeout passed)")


class RequestTerminated(Exception):
    """A request refused or ended by the server, through no fault of its own (HTTP 503,
    gRPC UNAVAILABLE). `reason` is ENGINE_DEAD or SHUTTING_DOWN."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(eq=False)
class _Tracked:
    task: Optional[asyncio.Task] = None  # the task waiting on the engine right now, if any
    terminated: bool = False


class ServerLifecycle:
    def __init__(self, engine: Any):
        self.engine = engine
        self.draining = False
        self.engine_error: Optional[BaseException] = None
        self._terminal: Optional[RequestTerminated] = None
        self._tracked: set[_Tracked] = set()
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._died = asyncio.Event()
        self._watcher: Optional[asyncio.Task] = None

    # ------------------------------------------------------------ state
    @property
    def engine_dead(self) -> bool:
        return self.engine_error is not None or bool(getattr(self.engine, "errored", False))

    @property
    def num_active(self) -> int:
        return self._active

    def refusal(self) -> Optional[RequestTerminated]:
        """Why a new request is refused now, or None when it is accepted."""
        if self.engine_dead:
            return RequestTerminated(ENGINE_DEAD, DEAD_MESSAGE)
        if self.draining:
            return RequestTerminated(SHUTTING_DOWN, DRAINING_MESSAGE)
        return None

    # ------------------------------------------------------------ engine death
    def start(self) -> None:
        """Start watching the engine for death (in the serving event loop); idempotent."""
        if self._watcher is None and hasattr(self.engine, "wait_for_death"):
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        error = await self.engine.wait_for_death()
        self.engine_error = error
        logger.error("the engine died (%r): ending %d requests in flight", error,
                     len(self._tracked))
        self.terminate_all(RequestTerminated(ENGINE_DEAD, f"{DEAD_MESSAGE} ({error!r})"))
        self._died.set()

    async def wait_for_engine_death(self) -> BaseException:
        """Return the engine's error once start()'s watcher saw it die."""
        await self._died.wait()
        assert self.engine_error is not None
        return self.engine_error

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()

    # ------------------------------------------------------------ draining
    def begin_drain(self) -> None:
        self.draining = True

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Count one request in flight; RequestTerminated when it is refused."""
        refused = self.refusal()
        if refused is not None:
            raise refused
        self._active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def wait_idle(self, timeout: Optional[float]) -> bool:
        """Wait until no admitted request is in flight; False if `timeout` passed first."""
        if self._active == 0:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    # ------------------------------------------------------------ ending requests
    def terminate_all(self, error: RequestTerminated) -> None:
        """End every tracked generation with `error` now; later ones fail at their next step."""
        self._terminal = error
        for entry in list(self._tracked):
            if entry.task is not None and not entry.terminated:
                entry.terminated = True
                entry.task.cancel()

    def _terminal_error(self) -> RequestTerminated:
        assert self._terminal is not None
        return RequestTerminated(self._terminal.reason, self._terminal.message)

    async def track(self, outputs: AsyncIterator) -> AsyncIterator:
        """`outputs` (an engine generator), ended by terminate_all with RequestTerminated.

        terminate_all cancels the task waiting on the engine (nothing is polled per step);
        that cancellation becomes the error here, so the engine generator is closed (the
        request aborted) and the caller sees RequestTerminated rather than CancelledError.
        """
        entry = _Tracked()
        self._tracked.add(entry)
        try:
            async with contextlib.aclosing(outputs):
                while True:
                    if self._terminal is not None:
                        raise self._terminal_error()
                    task = asyncio.current_task()
                    entry.task = task
                    try:
                        item = await outputs.__anext__()
                    except StopAsyncIteration:
                        return
                    except asyncio.CancelledError:
                        # uncancel() == 0: ours was the only cancellation (not a disconnect).
                        if entry.terminated and task is not None and task.uncancel() == 0:
                            raise self._terminal_error() from None
                        raise
                    finally:
                        entry.task = None
                    yield item
        finally:
            self._tracked.discard(entry)
