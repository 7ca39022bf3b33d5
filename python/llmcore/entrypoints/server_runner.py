"""Serving an engine: load it, start the HTTP (uvicorn) and/or gRPC servers on it in one
event loop, and run their lifecycle (llmcore-server and the standalone gRPC server both
come here; cli.py only parses flags).

- SIGTERM / SIGINT: drain - refuse new requests (HTTP 503, gRPC UNAVAILABLE), wait at most
  --shutdown-timeout seconds for those in flight, end the rest with an error, stop the
  servers and the engine; the process exits 0. A second signal exits at once.
- Engine death: in-flight requests end with an error at once, /health answers 503, the
  servers stop and `serve` raises EngineDiedError (the process exits 1, for a supervisor
  to restart it).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
from typing import Any, Callable, Optional

from llmcore.config import EngineArgs, FrontendArgs
from llmcore.entrypoints.gc_tuning import tune_gc_for_serving
from llmcore.entrypoints.lifecycle import (DRAIN_TIMEOUT_MESSAGE, SHUTTING_DOWN,
                                           RequestTerminated, ServerLifecycle)

logger = logging.getLogger("llmcore.entrypoints.cli")

# After the drain's timeout: how long the ended requests get to send their error.
_TERMINATE_GRACE_S = 5.0
# --port / --grpc-port as the listeners' callers see them; (http port or None, grpc port or None).
ListeningCallback = Callable[[Optional[int], Optional[int]], None]


class StartupError(Exception):
    """A one-line reason to stop before serving."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class EngineDiedError(RuntimeError):
    """The engine died while serving; the process should exit non-zero."""


async def build_engine(engine_args: EngineArgs) -> Any:
    try:
        from llmcore.engine.async_llm import AsyncLLM  # noqa: PLC0415
    except ImportError as e:
        raise StartupError(f"the engine is not available: {e}") from None
    try:
        # the engine core runs in its own process; this one keeps HTTP/gRPC and text
        engine = AsyncLLM.from_engine_args(engine_args)
        if inspect.isawaitable(engine):
            engine = await engine
    except StartupError:
        raise
    except Exception as e:  # noqa: BLE001 - any load failure is one line, no traceback
        raise StartupError(f"cannot load model {engine_args.model!r}: {type(e).__name__}: {e}") \
            from None
    tune_gc_for_serving()  # after the model and its objects exist, so they are frozen
    return engine


def log_startup(engine: Any, frontend_args: FrontendArgs) -> None:
    info = engine.model_info
    try:
        stats = engine.get_stats()
        blocks = int(stats.num_total_blocks)
    except Exception:  # noqa: BLE001
        blocks = 0
    tokens = blocks * int(info.block_size)
    concurrency = tokens / max(1, int(info.max_model_len))
    logger.info("model %s (served as %s), dtype %s, max_model_len %d", info.model_path,
                ", ".join(info.served_model_names), info.dtype, info.max_model_len)
    logger.info("KV cache: %d blocks of %d tokens (%d tokens); maximum concurrency for "
                "%d tokens per request: %.2fx", blocks, info.block_size, tokens,
                info.max_model_len, concurrency)


def _address(frontend_args: FrontendArgs) -> str:
    scheme = "https" if frontend_args.ssl_certfile else "http"
    host = frontend_args.host or "0.0.0.0"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{frontend_args.port}{frontend_args.root_path or ''}"


class _UvicornServer:
    """Made lazily (uvicorn is imported only when HTTP is served)."""

    @staticmethod
    def make(config: Any) -> Any:
        import uvicorn  # noqa: PLC0415

        class Server(uvicorn.Server):
            # serve() owns SIGTERM/SIGINT: uvicorn must not stop (or re-raise the signal)
            # before the drain.
            @contextlib.contextmanager
            def capture_signals(self):
                yield

            def install_signal_handlers(self) -> None:  # uvicorn < 0.29
                pass

        return Server(config)


class _Signals:
    """First SIGTERM/SIGINT: `on_first()` (start the drain). Second: exit at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_first: Callable[[], None]):
        self.loop = loop
        self.on_first = on_first
        self.received = 0
        self.installed: list = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._handle, sig)
                self.installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                pass

    def _handle(self, sig: int) -> None:
        self.received += 1
        if self.received == 1:
            logger.info("%s: shutting down (send it again to exit at once)",
                        signal.Signals(sig).name)
            self.on_first()
            return
        logger.warning("%s again: exiting now", signal.Signals(sig).name)
        os._exit(128 + sig)

    def remove(self) -> None:
        for sig in self.installed:
            self.loop.remove_signal_handler(sig)


async def _drain(lifecycle: ServerLifecycle, timeout: float) -> None:
    lifecycle.begin_drain()
    logger.info("draining: %d requests in flight, waiting at most %gs (--shutdown-timeout)",
                lifecycle.num_active, timeout)
    if await lifecycle.wait_idle(timeout):
        return
    logger.warning("--shutdown-timeout passed with %d requests in flight: ending them",
                   lifecycle.num_active)
    lifecycle.terminate_all(RequestTerminated(SHUTTING_DOWN, DRAIN_TIMEOUT_MESSAGE))
    await lifecycle.wait_idle(_TERMINATE_GRACE_S)


def _http_server(engine: Any, engine_args: EngineArgs, frontend_args: FrontendArgs,
                 api_key: Optional[str], chat_template: Optional[str],
                 lifecycle: ServerLifecycle) -> Any:
    import uvicorn  # noqa: PLC0415

    from llmcore.entrypoints.openai.app import build_app  # noqa: PLC0415
    try:
        app = build_app(engine, frontend_args, engine_args, api_key=api_key,
                        chat_template=chat_template, lifecycle=lifecycle)
    except ValueError as e:
        raise StartupError(str(e), 2) from None
    config = uvicorn.Config(app, host=frontend_args.host, port=frontend_args.port,
                            log_level=frontend_args.uvicorn_log_level,
                            timeout_keep_alive=5,
                            # after our own drain: only idle or ending connections are left
                            timeout_graceful_shutdown=int(_TERMINATE_GRACE_S),
                            ssl_keyfile=frontend_args.ssl_keyfile,
                            ssl_certfile=frontend_args.ssl_certfile,
                            ssl_ca_certs=frontend_args.ssl_ca_certs,
                            ssl_cert_reqs=frontend_args.ssl_cert_reqs)
    return _UvicornServer.make(config)


async def _start_grpc(engine: Any, frontend_args: FrontendArgs, api_key: Optional[str],
                      lifecycle: ServerLifecycle, engine_args: Optional[EngineArgs] = None) -> Any:
    try:
        from llmcore.entrypoints.grpc.server import serve_grpc  # noqa: PLC0415
    except ImportError as e:
        raise StartupError(f"--grpc-port: the gRPC front end is not available: {e}", 2) \
            from None
    ea = engine_args if engine_args is not None else EngineArgs()
    grpc_server = await serve_grpc(engine, frontend_args, api_key, lifecycle=lifecycle,
                                   log_requests=not ea.disable_log_requests,
                                   max_log_len=ea.max_log_len)
    logger.info("gRPC listening on port %s",
                getattr(grpc_server, "llmcore_port", frontend_args.grpc_port))
    return grpc_server


async def serve(engine: Any, engine_args: EngineArgs, frontend_args: FrontendArgs,
                api_key: Optional[str], chat_template: Optional[str], *,
                on_listening: Optional[ListeningCallback] = None) -> None:
    """Serve `engine` until a signal (drained, then return) or the engine's death (raise
    EngineDiedError). The engine itself is left to the caller to shut down."""
    loop = asyncio.get_running_loop()
    lifecycle = ServerLifecycle(engine)
    lifecycle.start()
    stop = asyncio.Event()
    signals = _Signals(loop, stop.set)
    grpc_server = http_server = http_task = None
    try:
        grpc_port = None
        if frontend_args.grpc_port is not None:
            grpc_server = await _start_grpc(engine, frontend_args, api_key, lifecycle,
                                            engine_args)
            grpc_port = getattr(grpc_server, "llmcore_port", frontend_args.grpc_port)
        if not frontend_args.grpc_only:
            http_server = _http_server(engine, engine_args, frontend_args, api_key,
                                       chat_template, lifecycle)
            logger.info("serving the OpenAI API at %s", _address(frontend_args))
            http_task = loop.create_task(http_server.serve())
        if on_listening is not None:
            on_listening(None if http_server is None else frontend_args.port, grpc_port)
        death = loop.create_task(lifecycle.wait_for_engine_death())
        stopping = loop.create_task(stop.wait())
        waits = {death, stopping} | ({http_task} if http_task is not None else set())
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            death.cancel()
            stopping.cancel()
        if http_task in done:  # uvicorn stopped by itself (e.g. it could not listen)
            http_task.result()
            return
        if death in done:
            raise EngineDiedError(f"the engine died: {lifecycle.engine_error!r}")
        await _drain(lifecycle, frontend_args.shutdown_timeout)
    finally:
        if http_task is not None and not http_task.done():
            http_server.should_exit = True
            await asyncio.gather(http_task, return_exceptions=True)
        if grpc_server is not None:
            await grpc_server.stop(_TERMINATE_GRACE_S)
        lifecycle.close()
        signals.remove()


async def run(engine_args: EngineArgs, frontend_args: FrontendArgs, api_key: Optional[str],
              chat_template: Optional[str], *, engine: Any = None,
              on_listening: Optional[ListeningCallback] = None) -> None:
    """Load the engine (unless one is given), serve it, shut it down."""
    if engine is None:
        engine = await build_engine(engine_args)
    try:
        log_startup(engine, frontend_args)
        await serve(engine, engine_args, frontend_args, api_key, chat_template,
                    on_listening=on_listening)
    finally:
        try:
            engine.shutdown()
        except Exception:  # noqa: BLE001
            logger.debug("engine shutdown failed", exc_info=True)


def run_to_exit(engine_args: EngineArgs, frontend_args: FrontendArgs, api_key: Optional[str],
                chat_template: Optional[str], *, engine: Any = None,
                on_listening: Optional[ListeningCallback] = None) -> int:
    """run() in a new event loop; the process exit code: 0 after a shutdown by signal, 1 when
    the engine died. StartupError propagates (the caller prints it)."""
    try:
        asyncio.run(run(engine_args, frontend_args, api_key, chat_template, engine=engine,
                        on_listening=on_listening))
    except EngineDiedError as e:
        logger.error("%s; exiting", e)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the handlers were installed (model load)
        return 0
    return 0
