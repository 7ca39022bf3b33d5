"""The engine-core process: builds a core from a factory and serves it over ZeroMQ.

Wire format (msgpack, typed decoders; never pickle on a socket):
  front end -> core  (PUSH -> PULL):  [EngineCoreRequestType byte, payload]
  core -> front end  (PUSH -> PULL):  [OutputFrame byte, payload]
A frame that does not decode as the type its tag names is logged and dropped.

Start-up travels over a multiprocessing pipe, not a socket: the factory's name and
arguments go through the `spawn` start itself, and the core answers on the pipe with one
msgpack-encoded `ReadyMessage` once the core is built (or with the factory's error). The
pipe then stays open as a parent-death signal: its EOF means the front end is gone.

Threads: an input thread receives and decodes frames into a queue, an output thread
encodes and sends, so socket I/O overlaps the step; the main thread only drives the core.

`start_core` and `CoreRunner` are the process-independent halves: the engine core as a Ray
actor (core_ray.py) builds and serves its core with them too.
"""

from __future__ import annotations

import importlib
import logging
import os
import queue
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any, Optional, Union

import msgspec
import zmq

from llmcore.engine.core_types import (
    EngineCoreOutput,
    EngineCoreOutputs,
    EngineCoreRequest,
    EngineCoreRequestType,
    UtilityRequest,
    UtilityResult,
)

logger = logging.getLogger(__name__)

# First frame of a core -> front end message.
OUTPUT_FRAME_OUTPUTS = b"\x00"   # payload: EngineCoreOutputs
OUTPUT_FRAME_UTILITY = b"\x01"   # payload: UtilityResult

# Core methods that have their own message type (or must never be called remotely).
_NOT_UTILITIES = frozenset({"add_request", "abort_requests", "step", "shutdown"})

_PARENT_GONE = "front end is gone"
_INPUT_POLL_MS = 100        # how often the input thread looks at its stop flag
_SOCKET_LINGER_MS = 500     # bounded: a dead front end must not hold the exit


class ReadyMessage(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """The core's one start-up message on the pipe."""

    ok: bool
    pid: int
    info: Optional[dict] = None     # the core's ready_info(), when it has one
    error: Optional[str] = None     # the factory's exception, when not ok


def resolve_factory(core_factory: str) -> Any:
    """'package.module:QualName' -> the object (a class or a function)."""
    module_name, sep, qualname = core_factory.partition(":")
    if not sep or not module_name or not qualname:
        raise ValueError(f"core_factory must be 'module:qualname', got {core_factory!r}")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"core_factory {core_factory!r} is not callable")
    return obj


def _set_parent_death_signal(sig: int) -> None:
    """Linux: have the kernel send `sig` when the parent exits (best effort)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        if libc.prctl(pr_set_pdeathsig, sig, 0, 0, 0) != 0:
            logger.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    except (OSError, AttributeError) as e:
        logger.warning("prctl(PR_SET_PDEATHSIG) unavailable: %s", e)


class _Stop:
    """Queue item: stop serving (SHUTDOWN received or the front end is gone)."""

    def __init__(self, reason: str):
        self.reason = reason


_InputItem = Union[
    tuple[EngineCoreRequestType, Any],  # decoded message
    _Stop,
]


class _InputThread(threading.Thread):
    """Receives frames, decodes them with typed decoders, queues what decodes."""

    def __init__(self, ctx: zmq.Context, addr: str, out: "queue.Queue[_InputItem]"):
        super().__init__(name="core-input", daemon=True)
        self._sock = ctx.socket(zmq.PULL)
        self._sock.setsockopt(zmq.RCVHWM, 0)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(addr)
        self._out = out
        self._stop_event = threading.Event()
        self._decoders = {
            EngineCoreRequestType.ADD: msgspec.msgpack.Decoder(EngineCoreRequest),
            EngineCoreRequestType.ABORT: msgspec.msgpack.Decoder(list[str]),
            EngineCoreRequestType.UTILITY: msgspec.msgpack.Decoder(UtilityRequest),
        }

    def stop(self) -> None:
        self._stop_event.set()

    def close_unstarted(self) -> None:
        self._sock.close()

    def decode(self, frames: list) -> Optional[tuple[EngineCoreRequestType, Any]]:
        """A message, or None (logged) when the frames are not a valid message."""
        if not frames or len(frames) > 2:
            logger.warning("engine core: dropped a message of %d frames", len(frames))
            return None
        try:
            kind = EngineCoreRequestType(bytes(frames[0].buffer))
        except ValueError:
            logger.warning("engine core: dropped a message with unknown type %r",
                           bytes(frames[0].buffer[:8]))
            return None
        if kind is EngineCoreRequestType.SHUTDOWN:
            if len(frames) == 2 and len(frames[1].buffer):
                logger.warning("engine core: dropped a SHUTDOWN message with a payload")
                return None
            return kind, None
        if len(frames) != 2:
            logger.warning("engine core: dropped a %s message without payload", kind.name)
            return None
        try:
            return kind, self._decoders[kind].decode(frames[1].buffer)
        except (msgspec.DecodeError, ValueError, TypeError) as e:
            # msgspec validates while decoding; SamplingParams' own checks raise ValueError.
            logger.warning("engine core: dropped an undecodable %s message: %s", kind.name, e)
            return None

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                if not self._sock.poll(_INPUT_POLL_MS, zmq.POLLIN):
                    continue
                message = self.decode(self._sock.recv_multipart(copy=False))
                if message is not None:
                    self._out.put(message)
        except zmq.ZMQError as e:
            if not self._stop_event.is_set():
                logger.error("engine core: input socket failed: %s", e)
                self._out.put(_Stop(f"input socket failed: {e}"))
        finally:
            self._sock.close()


class _OutputThread(threading.Thread):
    """Encodes and sends what the main thread queues; None ends it."""

    def __init__(self, ctx: zmq.Context, addr: str):
        super().__init__(name="core-output", daemon=True)
        self._sock = ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, 0)
        self._sock.setsockopt(zmq.LINGER, _SOCKET_LINGER_MS)
        self._sock.connect(addr)
        self.queue: "queue.Queue[Optional[Union[EngineCoreOutputs, UtilityResult]]]" = \
            queue.Queue()
        self._encoder = msgspec.msgpack.Encoder()

    def close_unstarted(self) -> None:
        self._sock.close()

    def run(self) -> None:
        try:
            while True:
                item = self.queue.get()
                if item is None:
                    return
                tag = OUTPUT_FRAME_UTILITY if isinstance(item, UtilityResult) \
                    else OUTPUT_FRAME_OUTPUTS
                self._sock.send_multipart([tag, self._encoder.encode(item)], copy=False)
        except zmq.ZMQError as e:
            logger.error("engine core: output socket failed: %s", e)
        finally:
            self._sock.close()


class _ParentWatcher(threading.Thread):
    """Blocks on the start-up pipe; EOF (or any error) means the front end is gone."""

    def __init__(self, conn: Connection, inputs: "queue.Queue[_InputItem]"):
        super().__init__(name="core-parent-watch", daemon=True)
        self._conn = conn
        self._inputs = inputs

    def run(self) -> None:
        try:
            while True:
                self._conn.recv_bytes()  # the front end never writes: only EOF ends this
        except (EOFError, OSError):
            pass
        self._inputs.put(_Stop(_PARENT_GONE))


class CoreServer:
    """Drives one core object: the busy loop of the core process."""

    def __init__(self, core: Any, inputs: "queue.Queue[_InputItem]",
                 outputs: "queue.Queue[Optional[Union[EngineCoreOutputs, UtilityResult]]]"):
        self.core = core
        self.inputs = inputs
        self.outputs = outputs
        self._errors: list[EngineCoreOutput] = []   # refused requests, sent with the next outputs
        self._stats_due = False                     # an abort changed the core's state
        self._encoder = msgspec.msgpack.Encoder()

    def serve(self) -> str:
        """Runs until SHUTDOWN or the front end is gone; returns why it stopped."""
        while True:
            busy = bool(self.core.has_unfinished_requests())
            # Idle: block until something arrives. Busy: take what is there, then step.
            try:
                item = self.inputs.get(block=not busy)
            except queue.Empty:
                item = None
            while item is not None:
                if isinstance(item, _Stop):
                    return item.reason
                if item[0] is EngineCoreRequestType.SHUTDOWN:
                    return "shutdown requested"
                self._handle(*item)
                try:
                    item = self.inputs.get_nowait()
                except queue.Empty:
                    item = None
            if self.core.has_unfinished_requests():
                outputs = self.core.step()
                if self._errors:
                    outputs.outputs.extend(self._errors)
                    self._errors = []
                self.outputs.put(outputs)
            elif self._errors or self._stats_due:
                # idle now (refusals, or aborts that emptied it): the front end's gauges
                # would otherwise keep the last step's numbers
                self.outputs.put(EngineCoreOutputs(outputs=self._errors, stats=self._stats(),
                                                   timestamp=time.time()))
                self._errors = []
            self._stats_due = False

    def _stats(self):
        get_stats = getattr(self.core, "get_stats", None)
        return get_stats() if callable(get_stats) else None

    def _handle(self, kind: EngineCoreRequestType, payload: Any) -> None:
        if kind is EngineCoreRequestType.ADD:
            try:
                self.core.add_request(payload)
            except ValueError as e:
                self._errors.append(EngineCoreOutput(
                    request_id=payload.request_id, finish_reason="error", error=str(e)))
        elif kind is EngineCoreRequestType.ABORT:
            self.core.abort_requests(payload)
            self._stats_due = True
        elif kind is EngineCoreRequestType.UTILITY:
            self.outputs.put(self._call_utility(payload))

    def _call_utility(self, req: UtilityRequest) -> UtilityResult:
        if req.method.startswith("_") or req.method in _NOT_UTILITIES:
            return UtilityResult(req.call_id, error=f"{req.method!r} is not a utility method")
        method = getattr(self.core, req.method, None)
        if not callable(method):
            return UtilityResult(req.call_id, error=f"the core has no method {req.method!r}")
        try:
            value = method(*req.args)
            return UtilityResult(req.call_id, result=msgspec.Raw(self._encoder.encode(value)))
        except Exception as e:  # a failed utility is the caller's answer, not the core's end
            return UtilityResult(req.call_id, error=f"{type(e).__name__}: {e}")


def _make_core(core_factory: str, factory_args: tuple) -> tuple[Any, Optional[dict]]:
    core = resolve_factory(core_factory)(*factory_args)
    ready_info = getattr(core, "ready_info", None)
    return core, (ready_info() if callable(ready_info) else None)


def start_core(core_factory: str, factory_args: tuple) -> tuple[Optional[Any], ReadyMessage]:
    """Builds the core: (core, an ok ReadyMessage), or (None, a failed one naming the
    error). SystemExit (a signal during start-up) passes through."""
    try:
        core, info = _make_core(core_factory, factory_args)
    except SystemExit:
        raise
    except BaseException as e:  # every start-up failure is reported
        logger.error("engine core failed to start:\n%s", traceback.format_exc())
        return None, ReadyMessage(ok=False, pid=os.getpid(), error=f"{type(e).__name__}: {e}")
    ready = ReadyMessage(ok=True, pid=os.getpid(), info=info)
    try:
        msgspec.msgpack.encode(ready)  # a bad ready_info fails here, before the front end waits
    except (TypeError, msgspec.EncodeError) as e:
        _shutdown_core(core)
        return None, ReadyMessage(ok=False, pid=os.getpid(), error=f"ready_info(): {e}")
    return core, ready


def _shutdown_core(core: Any) -> bool:
    try:
        core.shutdown()
        return True
    except Exception:
        logger.error("engine core shutdown failed:\n%s", traceback.format_exc())
        return False


class CoreRunner:
    """Serves a built core over ZeroMQ: its input and output threads around a CoreServer.
    `run()` until SHUTDOWN or a _Stop in `inputs`; `close()` always, afterwards."""

    def __init__(self, core: Any, input_addr: str, output_addr: str):
        self.core = core
        self._ctx = zmq.Context()
        self.inputs: "queue.Queue[_InputItem]" = queue.Queue()
        self._input_thread = _InputThread(self._ctx, input_addr, self.inputs)
        self._output_thread = _OutputThread(self._ctx, output_addr)
        self._server = CoreServer(core, self.inputs, self._output_thread.queue)

    def run(self) -> str:
        """Serves until stopped; returns why."""
        self._input_thread.start()
        self._output_thread.start()
        return self._server.serve()

    def close(self) -> bool:
        """Shuts the core down, flushes what is queued for the front end, closes the
        sockets. False when the core's shutdown failed."""
        self._input_thread.stop()
        ok = _shutdown_core(self.core)
        for thread in (self._output_thread, self._input_thread):
            if thread.is_alive():
                if thread is self._output_thread:
                    thread.queue.put(None)   # flush what is queued, then close
                thread.join()
            elif thread.ident is None:
                thread.close_unstarted()
        self._ctx.term()
        return ok


def run_engine_core(core_factory: str, factory_args: tuple, input_addr: str,
                    output_addr: str, parent_conn: Connection) -> None:
    """Main of the engine-core process (the `spawn` target).

    Exits 0 on SHUTDOWN, SIGTERM/SIGINT or the front end's death; 1 when the core fails
    (start-up errors are also sent on `parent_conn`)."""
    parent_pid = os.getppid()
    parent_gone = [False]

    stopping = [False]   # once set, signals must not interrupt the clean-up

    def on_terminate(signum, frame):
        if not stopping[0]:
            stopping[0] = True
            raise SystemExit(0)

    def on_parent_death(signum, frame):
        # PDEATHSIG fires when the *thread* that started us exits; only a real reparent
        # means the front end is gone.
        if os.getppid() != parent_pid:
            parent_gone[0] = True
            on_terminate(signum, frame)

    signal.signal(signal.SIGTERM, on_terminate)
    signal.signal(signal.SIGINT, on_terminate)
    signal.signal(signal.SIGUSR2, on_parent_death)
    _set_parent_death_signal(signal.SIGUSR2)
    if os.getppid() != parent_pid:  # died before prctl took effect
        return

    ready_encoder = msgspec.msgpack.Encoder()
    try:
        core, ready = start_core(core_factory, factory_args)
    except SystemExit:
        return
    if core is None:
        _send_ready(parent_conn, ready_encoder, ready)
        sys.exit(1)
    runner = CoreRunner(core, input_addr, output_addr)
    _send_ready(parent_conn, ready_encoder, ready)
    exit_code = 0
    try:
        _ParentWatcher(parent_conn, runner.inputs).start()
        reason = runner.run()
        stopping[0] = True
        parent_gone[0] = parent_gone[0] or reason == _PARENT_GONE
        logger.info("engine core stopping: %s", reason)
    except SystemExit:
        pass
    except BaseException:
        logger.error("engine core failed:\n%s", traceback.format_exc())
        exit_code = 1
    finally:
        stopping[0] = True
        if not runner.close():
            exit_code = exit_code or 1
        if parent_gone[0]:
            _remove_orphaned_socket_dir(input_addr, output_addr)
    sys.exit(exit_code)


def _remove_orphaned_socket_dir(*addrs: str) -> None:
    """The front end died without cleaning up: remove its ipc socket files and their
    directory (rmdir only: it fails, harmlessly, if anything else is in there)."""
    paths = [a[len("ipc://"):] for a in addrs if a.startswith("ipc://")]
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass
    for dirname in {os.path.dirname(p) for p in paths}:
        try:
            os.rmdir(dirname)
        except OSError:
            pass


def _send_ready(conn: Connection, encoder: msgspec.msgpack.Encoder, msg: ReadyMessage) -> None:
    try:
        conn.send_bytes(encoder.encode(msg))
    except OSError:
        pass  # the front end is already gone; nothing is waiting for this
