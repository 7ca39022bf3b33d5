"""AsyncLLMEngine: one background thread runs LLMEngine.step() in a loop; many asyncio
streams submit requests and receive RequestOutput snapshots.

The model step runs in its own thread so the event loop (HTTP/gRPC I/O) stays
responsive while torch computes (torch releases the GIL inside its ops). All calls
into the C++ scheduler happen on that thread; other threads only enqueue commands.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import queue
import threading
import uuid
from typing import AsyncIterator, Optional

from llmcore.config import EngineArgs
from llmcore.engine.death_waiters import resolve_waiters
from llmcore.engine.llm_engine import LLMEngine
from llmcore.engine.snapshot_stream import newest_snapshots
from llmcore.engine.protocol import EngineStats, PromptType
from llmcore.engine.stat_logger import StatLogger
from llmcore.outputs import RequestOutput
from llmcore.pooling_outputs import PoolingRequestOutput
from llmcore.pooling_params import PoolingParams
from llmcore.sampling_params import SamplingParams
from llmcore.tokenizer.pool import create_tokenizer_pool

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    pass


class _Stream:
    __slots__ = ("loop", "queue", "finished")

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.finished = False

    def put(self, item) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


def _put_all(items: list) -> None:
    for q, item in items:
        q.put_nowait(item)


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine, start: bool = True,
                 stat_logger: Optional[StatLogger] = None):
        self.engine = engine
        self._stat_logger = stat_logger
        self.model_info = engine.model_info
        self.tokenizer = engine.tokenizer
        self.chat_template = getattr(engine.tokenizer, "chat_template", None)
        # the servers' tokenization / chat rendering (--tokenizer-pool-size)
        self.tokenizer_pool = create_tokenizer_pool(engine.config.tokenizer_pool_config,
                                                    engine.tokenizer)
        self.metrics = engine.metrics
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._stop = threading.Event()
        self._dead: Optional[BaseException] = None
        self._death_waiters: list = []  # (event loop, future) of wait_for_death callers
        self._stats = engine.get_stats()
        self._thread = threading.Thread(target=self._run, name="llmcore-engine", daemon=True)
        if start:
            self._thread.start()

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs, start_engine_loop: bool = True) -> "AsyncLLMEngine":
        return cls(LLMEngine(engine_args), start=start_engine_loop,
                   stat_logger=None if engine_args.disable_log_stats else StatLogger())

    # ------------------------------------------------------------ client side
    def generate(self, prompt: PromptType, sampling_params: SamplingParams,
                 request_id: Optional[str] = None, priority: int = 0
                 ) -> AsyncIterator[RequestOutput]:
        """Validate now (ValueError on bad input), then stream cumulative outputs.
        priority: the scheduler's (lower runs first), as LLMEngine.add_request's."""
        if self._dead is not None:
            raise EngineDeadError(f"engine loop is dead: {self._dead!r}")
        request_id = request_id if request_id is not None else uuid.uuid4().hex
        req = self.engine.make_request(request_id, prompt, sampling_params)
        stream = _Stream(asyncio.get_running_loop())
        with self._lock:
            if request_id in self._streams:
                raise ValueError(f"request_id {request_id!r} is already in use")
            self._streams[request_id] = stream
        self._commands.put(("add", (req, int(priority))))
        self._wakeup.set()
        return self._iterate(request_id, stream)

    def encode(self, prompt: PromptType, pooling_params: PoolingParams,
               request_id: Optional[str] = None, priority: int = 0
               ) -> AsyncIterator[PoolingRequestOutput]:
        """An embedding model's pooling request (vLLM's `encode`): validated now
        (ValueError), then one finished PoolingRequestOutput."""
        if not isinstance(pooling_params, PoolingParams):
            raise ValueError(f"pooling_params: expected PoolingParams, got "
                             f"{type(pooling_params).__name__}")
        return self.generate(prompt, pooling_params, request_id, priority)  # type: ignore[arg-type]

    async def _iterate(self, request_id: str, stream: _Stream) -> AsyncIterator[RequestOutput]:
        try:
            async for item in newest_snapshots(stream.queue):
                if item.finished:
                    stream.finished = True
                yield item
        finally:
            if not stream.finished:
                # Consumer went away (disconnect, cancellation): free the KV blocks now.
                self._abort_nowait(request_id)
            with self._lock:
                self._streams.pop(request_id, None)

    def _abort_nowait(self, request_id: str) -> None:
        self._commands.put(("abort", request_id))
        self._wakeup.set()

    async def abort(self, request_id: str) -> None:
        self._abort_nowait(request_id)

    def get_stats(self) -> EngineStats:
        return copy.deepcopy(self._stats)

    @property
    def errored(self) -> bool:
        return self._dead is not None or (self._thread.ident is not None and not self._thread.is_alive()
                                           and not self._stop.is_set())

    async def check_health(self) -> None:
        if self.errored:
            raise EngineDeadError(f"engine loop is dead: {self._dead!r}")

    async def wait_for_death(self) -> BaseException:
        loop = asyncio.get_running_loop()
        waiter = (loop, loop.create_future())
        with self._lock:
            if self._dead is not None:
                return self._dead
            self._death_waiters.append(waiter)
        try:
            return await waiter[1]
        finally:
            with self._lock:
                if waiter in self._death_waiters:
                    self._death_waiters.remove(waiter)

    def shutdown(self) -> None:
        self.tokenizer_pool.shutdown()
        self._stop.set()
        self._wakeup.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)

    # ------------------------------------------------------------ engine thread
    def _run(self) -> None:
        engine = self.engine
        try:
            while not self._stop.is_set():
                self._drain_commands()
                if not engine.has_unfinished_requests():
                    self._stats = engine.get_stats()
                    if self._stat_logger is not None:
                        self._stat_logger.maybe_log(self._stats)
                    self._wakeup.wait(timeout=0.5)
                    self._wakeup.clear()
                    continue
                outputs = engine.step()
                self._stats = copy.copy(engine._stats)
                if outputs:
                    self._deliver(outputs)
                for rid, msg in engine.take_refused():   # that request's error, not the loop's
                    with self._lock:
                        stream = self._streams.get(rid)
                    if stream is not None:
                        stream.put(ValueError(msg))
                if self._stat_logger is not None:
                    self._stat_logger.maybe_log(self._stats)
        except BaseException as e:  # noqa: BLE001 - the loop must report any death
            logger.exception("engine loop died")
            with self._lock:
                self._dead = e
                streams = list(self._streams.values())
                waiters = list(self._death_waiters)
            for s in streams:
                s.put(EngineDeadError(f"engine loop died: {e!r}"))
            resolve_waiters(waiters, e)

    def _deliver(self, outputs: list) -> None:
        """Hand one step's outputs to their streams with one call_soon_threadsafe per event
        loop, not one per request: each such call is a wake-up write to the loop's self-pipe
        and a separate callback for the loop to run (256 of each per step at batch 256)."""
        by_loop: dict = {}
        with self._lock:
            for out in outputs:
                stream = self._streams.get(out.request_id)
                if stream is not None:
                    by_loop.setdefault(stream.loop, []).append((stream.queue, out))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # that loop is closed: its consumers are gone, not ours to die of
                logger.warning("dropping %d outputs for a closed event loop", len(items))

    def _drain_commands(self) -> None:
        engine = self.engine
        while True:
            try:
                kind, arg = self._commands.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                req, priority = arg
                try:
                    engine.add_processed_request(req, priority)
                except ValueError as e:
                    with self._lock:
                        stream = self._streams.get(req.request_id)
                    if stream is not None:
                        stream.put(e)
            elif kind == "abort":
                engine.abort_request(arg)
