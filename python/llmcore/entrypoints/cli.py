"""`llmcore-server` (same program as `python -m llmcore.entrypoints.openai.api_server`).

Start-up order: parse flags (from the EngineArgs / FrontendArgs dataclasses), validate them
(a bad or unsupported flag exits 2 with one line naming it), load the engine (an
unreadable model exits 1 with one line), log what was loaded, then serve HTTP (uvicorn)
and, with --grpc-port, gRPC in the same event loop.

This is the only place that reads the environment (LLMCORE_API_KEY).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import sys
from typing import Any, Optional, Sequence

from llmcore.config import EngineArgs, FrontendArgs
from llmcore.entrypoints.gc_tuning import tune_gc_for_serving

logger = logging.getLogger("llmcore.entrypoints.cli")

_PROG = "llmcore-server"


class StartupError(Exception):
    """A one-line reason to stop before serving."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _fail(message: str, code: int) -> None:
    message = " ".join(str(message).split())  # one line
    print(f"{_PROG}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _setup_logging(level: str) -> None:
    lvl = getattr(logging, level.upper(), logging.INFO) if level != "trace" else logging.DEBUG
    root = logging.getLogger("llmcore")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s %(name)s: %(message)s",
                                               "%m-%d %H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(min(lvl, logging.INFO))
    root.propagate = False


def prepare(argv: Optional[Sequence[str]] = None):
    """Parse and validate flags; return (engine_args, frontend_args, api_key, chat_template).

    Raises StartupError (code 2) with a one-line reason on a bad flag.
    """
    from llmcore.entrypoints.arg_parser import parse_args, validate_args  # noqa: PLC0415
    from llmcore.entrypoints.chat_template import (ChatTemplateError, check_template,  # noqa
                                                   load_chat_template)

    engine_args, frontend_args = parse_args(argv)  # argparse errors exit 2 with one line
    try:
        validate_args(engine_args, frontend_args)
        chat_template = load_chat_template(frontend_args.chat_template)
        if chat_template is not None:
            check_template(chat_template)
    except (ValueError, ChatTemplateError) as e:
        raise StartupError(str(e), 2) from None
    for flag, path in (("--ssl-keyfile", frontend_args.ssl_keyfile),
                       ("--ssl-certfile", frontend_args.ssl_certfile),
                       ("--ssl-ca-certs", frontend_args.ssl_ca_certs)):
        if path is not None and not os.path.isfile(path):
            raise StartupError(f"{flag}: cannot read {path!r}", 2)
    if frontend_args.middleware:
        from llmcore.entrypoints.openai.api_server import load_middleware  # noqa: PLC0415
        for path in frontend_args.middleware:
            try:
                load_middleware(path)
            except ValueError as e:
                raise StartupError(str(e), 2) from None
    api_key = frontend_args.api_key or os.environ.get("LLMCORE_API_KEY") or None
    return engine_args, frontend_args, api_key, chat_template


async def build_engine(engine_args: EngineArgs) -> Any:
    try:
        from llmcore.engine.async_engine import AsyncLLMEngine  # noqa: PLC0415
    except ImportError as e:
        raise StartupError(f"the engine is not available: {e}") from None
    try:
        engine = AsyncLLMEngine.from_engine_args(engine_args)
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


async def serve(engine: Any, engine_args: EngineArgs, frontend_args: FrontendArgs,
                api_key: Optional[str], chat_template: Optional[str]) -> None:
    grpc_server = None
    if frontend_args.grpc_port is not None:
        try:
            from llmcore.entrypoints.grpc.server import serve_grpc  # noqa: PLC0415
        except ImportError as e:
            raise StartupError(f"--grpc-port: the gRPC front end is not available: {e}", 2) \
                from None
        grpc_server = serve_grpc(engine, frontend_args, api_key,
                                 log_requests=not engine_args.disable_log_requests,
                                 max_log_len=engine_args.max_log_len)
        if inspect.isawaitable(grpc_server):
            grpc_server = await grpc_server
        logger.info("gRPC listening on port %s",
                    getattr(grpc_server, "llmcore_port", frontend_args.grpc_port))
    try:
        if frontend_args.grpc_only:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            return
        import uvicorn  # noqa: PLC0415

        from llmcore.entrypoints.openai.api_server import build_app  # noqa: PLC0415
        try:
            app = build_app(engine, frontend_args, engine_args, api_key=api_key,
                            chat_template=chat_template)
        except ValueError as e:
            raise StartupError(str(e), 2) from None
        config = uvicorn.Config(app, host=frontend_args.host, port=frontend_args.port,
                                log_level=frontend_args.uvicorn_log_level,
                                timeout_keep_alive=5,
                                ssl_keyfile=frontend_args.ssl_keyfile,
                                ssl_certfile=frontend_args.ssl_certfile,
                                ssl_ca_certs=frontend_args.ssl_ca_certs,
                                ssl_cert_reqs=frontend_args.ssl_cert_reqs)
        server = uvicorn.Server(config)
        logger.info("serving the OpenAI API at %s", _address(frontend_args))
        await server.serve()
    finally:
        if grpc_server is not None:
            stopped = grpc_server.stop(5)
            if inspect.isawaitable(stopped):
                await stopped


async def run(engine_args: EngineArgs, frontend_args: FrontendArgs, api_key: Optional[str],
              chat_template: Optional[str]) -> None:
    engine = await build_engine(engine_args)
    try:
        log_startup(engine, frontend_args)
        await serve(engine, engine_args, frontend_args, api_key, chat_template)
    finally:
        try:
            engine.shutdown()
        except Exception:  # noqa: BLE001
            logger.debug("engine shutdown failed", exc_info=True)


def main(argv: Optional[Sequence[str]] = None) -> None:
    try:
        engine_args, frontend_args, api_key, chat_template = prepare(argv)
    except StartupError as e:
        _fail(str(e), e.code)
        return
    _setup_logging(frontend_args.uvicorn_log_level)
    try:
        asyncio.run(run(engine_args, frontend_args, api_key, chat_template))
    except StartupError as e:
        _fail(str(e), e.code)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
