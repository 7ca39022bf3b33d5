"""`llmcore-server` (same program as `python -m llmcore.entrypoints.openai.api_server`).

Start-up order: parse flags (from the EngineArgs / FrontendArgs dataclasses), validate them
(a bad or unsupported flag exits 2 with one line naming it), then server_runner.py loads
the engine (an unreadable model exits 1 with one line), logs what was loaded, and serves
HTTP (uvicorn) and, with --grpc-port, gRPC in the same event loop, until a signal (drain,
exit 0) or the engine's death (exit 1).

This is the only place that reads the environment (LLMCORE_API_KEY).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Optional, Sequence

# Re-exported: the start-up path's names, for callers of cli (tests, embedders).
from llmcore.entrypoints.server_runner import (EngineDiedError, StartupError,  # noqa: F401
                                               build_engine, log_startup, run, run_to_exit,
                                               serve)

logger = logging.getLogger("llmcore.entrypoints.cli")

_PROG = "llmcore-server"


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
    from llmcore.entrypoints.openai.tool_parsers import resolve_tool_parser  # noqa: PLC0415

    engine_args, frontend_args = parse_args(argv)  # argparse errors exit 2 with one line
    try:
        validate_args(engine_args, frontend_args)
        resolve_tool_parser(frontend_args.enable_auto_tool_choice, frontend_args.tool_call_parser,
                            frontend_args.tool_parser_plugin)
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
        from llmcore.entrypoints.openai.app import load_middleware  # noqa: PLC0415
        for path in frontend_args.middleware:
            try:
                load_middleware(path)
            except ValueError as e:
                raise StartupError(str(e), 2) from None
    api_key = frontend_args.api_key or os.environ.get("LLMCORE_API_KEY") or None
    return engine_args, frontend_args, api_key, chat_template


def main(argv: Optional[Sequence[str]] = None, *, engine: Any = None) -> None:
    """llmcore-server. engine: serve this EngineClient instead of loading --model (tests;
    embedding the server)."""
    try:
        engine_args, frontend_args, api_key, chat_template = prepare(argv)
    except StartupError as e:
        _fail(str(e), e.code)
        return
    _setup_logging(frontend_args.uvicorn_log_level)
    try:
        code = run_to_exit(engine_args, frontend_args, api_key, chat_template, engine=engine)
    except StartupError as e:
        _fail(str(e), e.code)
        return
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
