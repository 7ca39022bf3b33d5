"""Clients of the engine core: in-process (offline `LLM`) or a separate process over ZMQ.

`InprocClient(core)` calls the core directly; `get_output()` runs one step.
`SyncMPClient` / `AsyncMPClient` start the core in its own `spawn`ed process
(core_proc.run_engine_core), or as a Ray actor (`CoreProcessConfig.ray`, core_ray.py), and
talk msgpack over ZeroMQ: by default `ipc://` sockets in a fresh private (0700) temp dir,
or `tcp://127.0.0.1`; another interface only for a Ray actor on another host (this host's
IP as Ray knows it).

Death of the core (any cause but our own shutdown) is noticed by a thread waiting on it
(the process sentinel, the actor's serving task): from then on every pending and future
get_output*/call_utility* raises `EngineDeadError`, `errored` is True and
`await wait_for_death()` returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import shutil
import tempfile
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import msgspec
import zmq
import zmq.asyncio

from llmcore.engine.core_errors import EngineDeadError, EngineStartupError, UtilityCallError
from llmcore.engine.core_launcher import CoreLauncher, ProcessCoreLauncher
from llmcore.engine.core_proc import OUTPUT_FRAME_OUTPUTS, OUTPUT_FRAME_UTILITY
from llmcore.engine.core_ray import RayCoreActorConfig
from llmcore.engine.death_waiters import resolve_waiters
from llmcore.engine.core_types import (
    EngineCoreOutput,
    EngineCoreOutputs,
    EngineCoreRequest,
    EngineCoreRequestType,
    UtilityRequest,
)

logger = logging.getLogger(__name__)

_POLL_MS = 100  # how often blocked sends/receives look at the client's state


class _UtilityResultWire(msgspec.Struct, array_like=True, gc=False):
    """How the client decodes a UtilityResult: msgspec cannot decode `Optional[Raw]`
    (the type core_types declares; it encodes fine), so here the Raw is plain, empty
    when absent."""

    call_id: int
    result: msgspec.Raw = msgspec.Raw()
    error: Optional[str] = None


__all__ = ["AsyncMPClient", "CoreProcessConfig", "EngineCoreClient", "EngineDeadError",
           "EngineStartupError", "InprocClient", "SyncMPClient", "UtilityCallError"]


@dataclass(frozen=True)
class CoreProcessConfig:
    """How to start and reach the engine-core process."""

    core_factory: str                      # "module:qualname", called with factory_args
    factory_args: tuple = ()               # travel through the spawn start, not a socket
    transport: Literal["ipc", "tcp"] = "ipc"
    tcp_ports: Optional[tuple[int, int]] = None  # (input, output); None: ephemeral ports
    startup_timeout_s: Optional[float] = None    # None: wait while the process lives
    shutdown_timeout_s: float = 5.0              # SHUTDOWN grace before terminate/kill
    ray: Optional[RayCoreActorConfig] = None     # set: the core is a Ray actor, not a process

    def __post_init__(self) -> None:
        if self.transport not in ("ipc", "tcp"):
            raise ValueError(f"transport must be 'ipc' or 'tcp', got {self.transport!r}")
        if self.tcp_ports is not None and (
                len(self.tcp_ports) != 2 or not all(0 <= p < 65536 for p in self.tcp_ports)):
            raise ValueError(f"tcp_ports must be two ports in [0, 65535], got {self.tcp_ports}")


class EngineCoreClient:
    """What a front end needs of the engine core. Sync clients implement the plain
    methods, async clients the *_async ones."""

    def add_request(self, request: EngineCoreRequest) -> None:
        raise NotImplementedError(f"{type(self).__name__} is an async client")

    def abort_requests(self, request_ids: list[str]) -> None:
        raise NotImplementedError(f"{type(self).__name__} is an async client")

    def get_output(self) -> EngineCoreOutputs:
        raise NotImplementedError(f"{type(self).__name__} is an async client")

    def call_utility(self, method: str, *args: Any, result_type: Any = Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} is an async client")

    async def add_request_async(self, request: EngineCoreRequest) -> None:
        raise NotImplementedError(f"{type(self).__name__} is a sync client")

    async def abort_requests_async(self, request_ids: list[str]) -> None:
        raise NotImplementedError(f"{type(self).__name__} is a sync client")

    async def get_output_async(self) -> EngineCoreOutputs:
        raise NotImplementedError(f"{type(self).__name__} is a sync client")

    async def call_utility_async(self, method: str, *args: Any, result_type: Any = Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} is a sync client")

    def shutdown(self) -> None:
        raise NotImplementedError


class InprocClient(EngineCoreClient):
    """The core in this process: get_output() steps it (the offline LLM's loop)."""

    def __init__(self, core: Any):
        self.core = core
        self._errors: list[EngineCoreOutput] = []

    def add_request(self, request: EngineCoreRequest) -> None:
        try:
            self.core.add_request(request)
        except ValueError as e:  # same contract as the process: an error output, not a raise
            self._errors.append(EngineCoreOutput(
                request_id=request.request_id, finish_reason="error", error=str(e)))

    def abort_requests(self, request_ids: list[str]) -> None:
        self.core.abort_requests(request_ids)

    def get_output(self) -> EngineCoreOutputs:
        outputs = self.core.step() if self.core.has_unfinished_requests() \
            else EngineCoreOutputs(outputs=[])
        if self._errors:
            outputs.outputs.extend(self._errors)
            self._errors = []
        return outputs

    def has_unfinished_requests(self) -> bool:
        return bool(self._errors) or bool(self.core.has_unfinished_requests())

    def call_utility(self, method: str, *args: Any, result_type: Any = Any) -> Any:
        if method.startswith("_"):
            raise UtilityCallError(f"{method!r} is not a utility method")
        try:
            fn = getattr(self.core, method)
        except AttributeError:
            raise UtilityCallError(f"the core has no method {method!r}") from None
        return fn(*args)

    def shutdown(self) -> None:
        self.core.shutdown()


def _make_launcher(config: CoreProcessConfig) -> CoreLauncher:
    if config.ray is not None:
        from llmcore.engine.core_ray import RayCoreLauncher
        return RayCoreLauncher(config.core_factory, config.factory_args, config.ray)
    return ProcessCoreLauncher(config.core_factory, config.factory_args,
                               config.shutdown_timeout_s)


def _release_core(launcher: CoreLauncher, tmpdir: Optional[str]) -> None:
    """Last resort (also the finalizer): no orphan core, no leftover socket dir."""
    launcher.stop()
    if tmpdir is not None:
        shutil.rmtree(tmpdir, ignore_errors=True)


class MPClient(EngineCoreClient):
    """Starts the core (through its launcher) and watches it; the transport halves are
    subclasses'."""

    def __init__(self, config: CoreProcessConfig, zmq_ctx: zmq.Context):
        self.config = config
        self.errored = False
        self._dead = threading.Event()
        self._dead_error: Optional[EngineDeadError] = None
        self._shutting_down = False
        self._lock = threading.Lock()
        self._death_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._call_ids = itertools.count()
        self._request_encoder = msgspec.msgpack.Encoder()
        self._outputs_decoder = msgspec.msgpack.Decoder(EngineCoreOutputs)
        self._utility_decoder = msgspec.msgpack.Decoder(_UtilityResultWire)
        self._result_decoders: dict[Any, msgspec.msgpack.Decoder] = {}

        self._ctx = zmq_ctx
        self._tmpdir: Optional[str] = None
        try:
            self._launcher = _make_launcher(config)
        except BaseException:
            self._ctx.destroy(linger=0)
            raise
        self._input_socket = self._ctx.socket(zmq.PUSH)
        self._output_socket = self._ctx.socket(zmq.PULL)
        for sock in (self._input_socket, self._output_socket):
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.setsockopt(zmq.LINGER, 0)
        try:
            input_addr, output_addr = self._bind(self._launcher.place())
            self._launcher.start(input_addr, output_addr)
        except BaseException:
            self._ctx.destroy(linger=0)
            _release_core(self._launcher, self._tmpdir)
            raise
        self._finalizer = weakref.finalize(self, _release_core, self._launcher, self._tmpdir)
        try:
            ready = self._launcher.wait_ready(config.startup_timeout_s)
        except BaseException:
            self._close_transport()
            self._finalizer()
            raise
        self.core_pid: int = ready.pid
        self.ready_info: dict = ready.info or {}
        threading.Thread(target=self._watch_core, name="core-death-watch",
                         daemon=True).start()

    # ------------------------------------------------------------------ core life
    def _bind(self, remote_host: Optional[str]) -> tuple[str, str]:
        """ipc (or loopback tcp) for a core on this host; tcp on `remote_host`, this
        host's IP, for one elsewhere."""
        if remote_host is None and self.config.transport == "ipc":
            self._tmpdir = tempfile.mkdtemp(prefix="llmcore-core-")  # mode 0700
            os.chmod(self._tmpdir, 0o700)
            addrs = (f"ipc://{self._tmpdir}/input", f"ipc://{self._tmpdir}/output")
        else:
            host = remote_host or "127.0.0.1"
            ports = self.config.tcp_ports or (0, 0)
            addrs = tuple(f"tcp://{host}:{p or '*'}" for p in ports)
        self._input_socket.bind(addrs[0])
        self._output_socket.bind(addrs[1])
        return (self._input_socket.getsockopt_string(zmq.LAST_ENDPOINT),
                self._output_socket.getsockopt_string(zmq.LAST_ENDPOINT))

    def _watch_core(self) -> None:
        launcher = self._launcher
        launcher.wait_exit()
        with self._lock:
            if self._shutting_down:
                err = EngineDeadError(launcher.exit_code, "engine core was shut down")
            else:
                err = EngineDeadError(launcher.exit_code, launcher.death_detail)
                self.errored = True
            self._dead_error = err
            self._dead.set()
            waiters, self._death_waiters = self._death_waiters, []
        self._on_death(err)
        resolve_waiters(waiters, err)

    def _on_death(self, err: EngineDeadError) -> None:
        """Fail what is pending (subclasses); runs on the watcher thread."""

    @property
    def exit_code(self) -> Optional[int]:
        return self._launcher.exit_code

    def is_alive(self) -> bool:
        return not self._dead.is_set()

    async def wait_for_death(self) -> EngineDeadError:
        """Returns (the error) once the core process is gone."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            if self._dead_error is not None:
                return self._dead_error
            self._death_waiters.append((loop, fut))
        return await fut

    def wait_for_death_sync(self, timeout: Optional[float] = None) -> bool:
        return self._dead.wait(timeout)

    def _check_alive(self) -> None:
        if self._dead_error is not None:
            raise self._dead_error

    # ------------------------------------------------------------------ encoding
    def _add_frames(self, request: EngineCoreRequest) -> list:
        return [EngineCoreRequestType.ADD.value, self._request_encoder.encode(request)]

    def _abort_frames(self, request_ids: list[str]) -> list:
        return [EngineCoreRequestType.ABORT.value,
                self._request_encoder.encode(list(request_ids))]

    def _utility_frames(self, call_id: int, method: str, args: tuple) -> list:
        return [EngineCoreRequestType.UTILITY.value,
                self._request_encoder.encode(UtilityRequest(call_id, method, list(args)))]

    def _decode_result(self, result: _UtilityResultWire, result_type: Any) -> Any:
        if result.error is not None:
            raise UtilityCallError(result.error)
        if not len(result.result):
            return None
        decoder = self._result_decoders.get(result_type)
        if decoder is None:
            decoder = self._result_decoders[result_type] = msgspec.msgpack.Decoder(result_type)
        return decoder.decode(result.result)

    def _decode_frames(self, frames: list) -> Optional[Union[EngineCoreOutputs, _UtilityResultWire]]:
        """The message, or None (logged) for frames that are not one."""
        tag = frames[0].bytes if frames else b""
        try:
            if len(frames) == 2 and tag == OUTPUT_FRAME_OUTPUTS:
                return self._outputs_decoder.decode(frames[1].buffer)
            if len(frames) == 2 and tag == OUTPUT_FRAME_UTILITY:
                return self._utility_decoder.decode(frames[1].buffer)
        except (msgspec.DecodeError, ValueError, TypeError) as e:
            logger.error("engine core client: dropped an undecodable message: %s", e)
            return None
        logger.error("engine core client: dropped a message (type %r, %d frames)",
                     tag[:8], len(frames))
        return None

    # ------------------------------------------------------------------ shutdown
    def _send_shutdown_nowait(self) -> None:
        raise NotImplementedError

    def _close_transport(self) -> None:
        for sock in (self._input_socket, self._output_socket):
            sock.close(linger=0)  # an asyncio socket's close also cancels its pending futures
        self._ctx.term()

    def shutdown(self) -> None:
        """SHUTDOWN, a bounded join, then terminate/kill; sockets and temp dir removed."""
        with self._lock:
            if self._shutting_down:
                return
            self._shutting_down = True
        if self._launcher.is_alive():
            try:
                self._send_shutdown_nowait()
            except zmq.ZMQError:
                pass  # no peer: terminate below
            self._launcher.join(self.config.shutdown_timeout_s)
        self._finalizer()  # terminate/kill if still alive, remove the socket dir
        self._dead.wait()  # the watcher has failed what was pending
        self._close_transport()
        self._launcher.close()


def _fail(fut: Union[asyncio.Future, concurrent.futures.Future], err: BaseException) -> None:
    if not fut.done():
        fut.set_exception(err)


class SyncMPClient(MPClient):
    """Blocking client: a receiver thread routes outputs to a queue and utility results
    to their futures."""

    def __init__(self, config: CoreProcessConfig):
        import queue

        self._outputs: "queue.Queue[Union[EngineCoreOutputs, EngineDeadError]]" = queue.Queue()
        self._pending: dict[int, concurrent.futures.Future] = {}
        self._send_lock = threading.Lock()
        self._closing = threading.Event()
        super().__init__(config, zmq.Context())
        self._receiver = threading.Thread(target=self._receive_loop, name="core-client-recv",
                                          daemon=True)
        self._receiver.start()

    def _receive_loop(self) -> None:
        sock = self._output_socket
        try:
            while not self._closing.is_set():
                if not sock.poll(_POLL_MS, zmq.POLLIN):
                    continue
                msg = self._decode_frames(sock.recv_multipart(copy=False))
                if msg is None:
                    continue
                if isinstance(msg, EngineCoreOutputs):
                    self._outputs.put(msg)
                else:
                    with self._lock:
                        fut = self._pending.pop(msg.call_id, None)
                    if fut is not None:
                        fut.set_result(msg)
        except zmq.ZMQError:
            if not self._closing.is_set():
                raise

    def _on_death(self, err: EngineDeadError) -> None:
        self._outputs.put(err)
        with self._lock:
            pending, self._pending = self._pending, {}
        for fut in pending.values():
            _fail(fut, err)

    def _send(self, frames: list) -> None:
        with self._send_lock:
            while True:
                self._check_alive()
                try:
                    self._input_socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                    return
                except zmq.Again:  # no connected peer yet (or any more): wait, watching death
                    self._input_socket.poll(_POLL_MS, zmq.POLLOUT)

    def add_request(self, request: EngineCoreRequest) -> None:
        self._send(self._add_frames(request))

    def abort_requests(self, request_ids: list[str]) -> None:
        self._send(self._abort_frames(request_ids))

    def get_output(self) -> EngineCoreOutputs:
        self._check_alive()
        item = self._outputs.get()
        if isinstance(item, EngineDeadError):
            self._outputs.put(item)  # for every other waiter
            raise item
        return item

    def call_utility(self, method: str, *args: Any, result_type: Any = Any) -> Any:
        call_id = next(self._call_ids)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self._check_alive()
            self._pending[call_id] = fut
        self._send(self._utility_frames(call_id, method, args))
        return self._decode_result(fut.result(), result_type)

    def _send_shutdown_nowait(self) -> None:
        with self._send_lock:
            self._input_socket.send(EngineCoreRequestType.SHUTDOWN.value, flags=zmq.NOBLOCK)

    def _close_transport(self) -> None:
        self._closing.set()
        receiver = getattr(self, "_receiver", None)
        if receiver is not None and receiver is not threading.current_thread():
            receiver.join()
        super()._close_transport()


class AsyncMPClient(MPClient):
    """asyncio client (zmq.asyncio); use it from one event loop. A receive task, started
    on first use, routes outputs to an asyncio.Queue and utility results to futures."""

    def __init__(self, config: CoreProcessConfig):
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._outputs: Optional[asyncio.Queue] = None
        self._pending: dict[int, asyncio.Future] = {}
        self._receive_task: Optional[asyncio.Task] = None
        super().__init__(config, zmq.asyncio.Context())

    def _ensure_started(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._outputs = asyncio.Queue()
            self._receive_task = loop.create_task(self._receive_loop())
            if self._dead_error is not None:
                self._outputs.put_nowait(self._dead_error)
        elif self._loop is not loop:
            raise RuntimeError("AsyncMPClient is bound to the event loop it was first used in")
        return loop

    async def _receive_loop(self) -> None:
        while True:
            msg = self._decode_frames(await self._output_socket.recv_multipart(copy=False))
            if msg is None:
                continue
            if isinstance(msg, EngineCoreOutputs):
                self._outputs.put_nowait(msg)
            else:
                fut = self._pending.pop(msg.call_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)

    def _on_death(self, err: EngineDeadError) -> None:
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._fail_pending, err)
            except RuntimeError:  # loop closed
                pass

    def _fail_pending(self, err: EngineDeadError) -> None:
        self._outputs.put_nowait(err)
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            _fail(fut, err)

    async def _send(self, frames: list) -> None:
        self._ensure_started()
        self._check_alive()
        sent = self._input_socket.send_multipart(frames, copy=False)
        if sent.done():
            sent.result()
            return
        death = asyncio.ensure_future(self.wait_for_death())
        done, _ = await asyncio.wait({sent, death}, return_when=asyncio.FIRST_COMPLETED)
        if sent in done:
            death.cancel()
            sent.result()
            return
        sent.cancel()
        raise death.result()

    async def add_request_async(self, request: EngineCoreRequest) -> None:
        await self._send(self._add_frames(request))

    async def abort_requests_async(self, request_ids: list[str]) -> None:
        await self._send(self._abort_frames(request_ids))

    async def get_output_async(self) -> EngineCoreOutputs:
        self._ensure_started()
        self._check_alive()
        item = await self._outputs.get()
        if isinstance(item, EngineDeadError):
            self._outputs.put_nowait(item)  # for every other waiter
            raise item
        return item

    async def call_utility_async(self, method: str, *args: Any, result_type: Any = Any) -> Any:
        loop = self._ensure_started()
        self._check_alive()
        call_id = next(self._call_ids)
        fut = loop.create_future()
        self._pending[call_id] = fut
        try:
            await self._send(self._utility_frames(call_id, method, args))
            result = await fut
        finally:
            self._pending.pop(call_id, None)
        return self._decode_result(result, result_type)

    def _send_shutdown_nowait(self) -> None:
        # A sync view of the same socket: shutdown() may run outside the event loop.
        zmq.Socket.shadow(self._input_socket.underlying).send(
            EngineCoreRequestType.SHUTDOWN.value, flags=zmq.NOBLOCK)

    def _close_transport(self) -> None:
        task = self._receive_task
        if task is not None and not task.done():
            try:
                if asyncio.get_running_loop() is self._loop:
                    task.cancel()
                else:
                    self._loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # no running loop here
                if not self._loop.is_closed():
                    self._loop.call_soon_threadsafe(task.cancel)
        super()._close_transport()
