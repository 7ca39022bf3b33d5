"""The OpenAI-compatible HTTP app (FastAPI).

`build_app(engine, ...)` makes the ASGI app for any `EngineClient`; it reads no flags or
environment by itself. llmcore/entrypoints/server_runner.py serves it (with uvicorn).
"""

from __future__ import annotations

import contextlib
import hmac
import importlib
import inspect
import json
import logging
import time
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import llmcore
from llmcore.config import EngineArgs, FrontendArgs
from llmcore.entrypoints.lifecycle import RequestTerminated, ServerLifecycle
from llmcore.entrypoints.openai.errors import APIError, error_body, error_response
from llmcore.entrypoints.openai.protocol import (ChatCompletionRequest, CompletionRequest,
                                                 DetokenizeRequest, EmbeddingRequest,
                                                 TokenizeRequest)
from llmcore.entrypoints.openai.serving_chat import OpenAIServingChat
from llmcore.entrypoints.openai.serving_completion import OpenAIServingCompletion
from llmcore.entrypoints.openai.serving_embedding import OpenAIServingEmbedding
from llmcore.entrypoints.openai.serving_engine import ServerConfig
from llmcore.entrypoints.openai.tool_parsers import resolve_tool_parser

logger = logging.getLogger("llmcore.entrypoints.openai.api_server")

# Probes answer while the server drains or the engine is dead (that is what they report).
_PROBE_PATHS = ("/health", "/metrics", "/version", "/ping")


def _route_path(scope: dict) -> str:
    path = scope.get("path", "")
    root = scope.get("root_path", "") or ""
    if root and path.startswith(root):
        path = path[len(root):]
    return path


async def _send_json(send: Any, status: int, body: dict, headers: tuple = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()), *headers]})
    await send({"type": "http.response.body", "body": data})


class LifecycleMiddleware:
    """Pure ASGI middleware: counts the requests in flight (a drain waits for them) and
    answers 503 to new ones while the server drains or once the engine is dead."""

    def __init__(self, app: Any, lifecycle: ServerLifecycle):
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") == "OPTIONS" \
                or _route_path(scope) in _PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            admitted = self.lifecycle.admitted()
            admitted.__enter__()
        except RequestTerminated as e:
            await _send_json(send, 503, error_body(e.message, 503, code=e.reason))
            return
        try:
            await self.app(scope, receive, send)
        finally:
            admitted.__exit__(None, None, None)


class APIKeyMiddleware:
    """Pure ASGI middleware: every /v1 route needs `Authorization: Bearer <key>`.

    The comparison is constant time (hmac.compare_digest). CORS preflights (OPTIONS) pass
    so that the CORS middleware outside can answer them.
    """

    def __init__(self, app: Any, api_key: str):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        if path == "/v1" or path.startswith("/v1/"):
            given = b""
            for name, value in scope.get("headers", []):
                if name == b"authorization":
                    given = value
                    break
            if not hmac.compare_digest(given, self.expected):
                await _send_json(send, 401, error_body(
                    "Incorrect API key provided. Pass it as 'Authorization: Bearer <key>'.", 401,
                    code="invalid_api_key"), ((b"www-authenticate", b"Bearer"),))
                return
        await self.app(scope, receive, send)


def _validation_message(exc: RequestValidationError) -> tuple[str, Optional[str]]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    if first.get("type") == "json_invalid":
        return "malformed JSON in the request body", None
    param = loc[0] if loc else None
    where = ".".join(loc) if loc else "body"
    msg = first.get("msg", "invalid value")
    return f"{where}: {msg}", param


def make_server_config(engine: Any, frontend_args: FrontendArgs,
                       engine_args: Optional[EngineArgs] = None,
                       chat_template: Optional[str] = None) -> ServerConfig:
    info = engine.model_info
    names = list(info.served_model_names) or [info.model_path]
    ea = engine_args or EngineArgs()
    return ServerConfig(served_model_names=names, max_model_len=int(info.max_model_len),
                        vocab_size=int(info.vocab_size),
                        max_logprobs=int(getattr(info, "max_logprobs", ea.max_logprobs)),
                        max_num_seqs=int(ea.max_num_seqs),
                        response_role=frontend_args.response_role,
                        chat_template=chat_template,
                        enable_auto_tool_choice=bool(frontend_args.enable_auto_tool_choice),
                        tool_parser_cls=resolve_tool_parser(frontend_args.enable_auto_tool_choice,
                                                            frontend_args.tool_call_parser,
                                                            frontend_args.tool_parser_plugin),
                        trust_request_chat_template=bool(
                            getattr(frontend_args, "trust_request_chat_template", False)),
                        disable_log_requests=bool(ea.disable_log_requests),
                        max_log_len=ea.max_log_len,
                        sampling_defaults=dict(getattr(info, "sampling_defaults", None) or {}))


def build_app(engine: Any, frontend_args: Optional[FrontendArgs] = None,
              engine_args: Optional[EngineArgs] = None, *, api_key: Optional[str] = None,
              chat_template: Optional[str] = None,
              lifecycle: Optional[ServerLifecycle] = None) -> FastAPI:
    """The ASGI app serving `engine` (an EngineClient).

    api_key: the key to require on /v1 routes (cli.py resolves --api-key / LLMCORE_API_KEY).
    chat_template: the --chat-template text (already loaded), overriding the model's.
    lifecycle: shared with the gRPC server when both run (draining, engine death); a new one
    watching `engine` (from the app's startup) when None.
    """
    fa = frontend_args or FrontendArgs()
    config = make_server_config(engine, fa, engine_args, chat_template)
    owns_lifecycle = lifecycle is None
    lifecycle = lifecycle if lifecycle is not None else ServerLifecycle(engine)
    completion = OpenAIServingCompletion(engine, config, lifecycle)
    chat = OpenAIServingChat(engine, config, lifecycle)
    embedding = OpenAIServingEmbedding(engine, config, lifecycle)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        lifecycle.start()
        yield
        if owns_lifecycle:
            lifecycle.close()

    app = FastAPI(title="llmcore OpenAI-compatible server", version=llmcore.__version__,
                  lifespan=lifespan)
    # --root-path as vLLM sets it: routes answer with and without the prefix, and
    # /openapi.json names the prefix in `servers`.
    app.root_path = fa.root_path or ""
    app.state.engine = engine
    app.state.config = config
    app.state.lifecycle = lifecycle

    @app.exception_handler(RequestTerminated)
    async def _terminated(_request: Request, exc: RequestTerminated):
        return error_response(exc.message, 503, code=exc.reason)

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(message, 400, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        return error_response(str(exc.detail), exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(_request: Request, exc: Exception):
        logger.exception("internal error")
        return error_response(f"internal error: {type(exc).__name__}", 500)

    # ---------------------------------------------------------------- routes
    @app.get("/health")
    async def health() -> Response:
        if lifecycle.engine_dead:
            return error_response("the engine loop is dead", 503)
        if lifecycle.draining:
            return error_response("the server is shutting down", 503)
        try:
            await engine.check_health()
        except Exception as e:  # noqa: BLE001
            return error_response(f"engine unhealthy: {e}", 503)
        return Response(status_code=200)

    @app.get("/version")
    async def version():
        return {"version": llmcore.__version__}

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest  # noqa: PLC0415
        m = engine.metrics
        try:
            stats = engine.get_stats()
            m.num_requests_running.set(stats.num_running)
            m.num_requests_waiting.set(stats.num_waiting)
            m.num_requests_swapped.set(stats.num_swapped)
            m.kv_cache_usage_perc.set(stats.kv_cache_usage)
            m.gpu_cache_usage_perc.set(stats.kv_cache_usage)
        except Exception:  # noqa: BLE001 - the engine's own values are still exported
            logger.debug("get_stats failed", exc_info=True)
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        info = engine.model_info
        created = int(time.time())
        data = [{"id": name, "object": "model", "created": created, "owned_by": "llmcore",
                 "root": info.model_path, "parent": None, "max_model_len": config.max_model_len,
                 "task": embedding.task,
                 "permission": [{"id": f"modelperm-{name}", "object": "model_permission",
                                 "created": created, "allow_create_engine": False,
                                 "allow_sampling": True, "allow_logprobs": True,
                                 "allow_search_indices": False, "allow_view": True,
                                 "allow_fine_tuning": False, "organization": "*", "group": None,
                                 "is_blocking": False}]}
                for name in config.served_model_names]
        return {"object": "list", "data": data}

    @app.post("/v1/completions")
    async def create_completion(request: CompletionRequest, raw_request: Request):
        return await completion.create_completion(request, raw_request)

    @app.post("/v1/chat/completions")
    async def create_chat_completion(request: ChatCompletionRequest, raw_request: Request):
        return await chat.create_chat_completion(request, raw_request)

    @app.post("/v1/embeddings")
    async def create_embedding(request: EmbeddingRequest, raw_request: Request):
        return await embedding.create_embedding(request, raw_request)

    @app.post("/tokenize")
    async def tokenize(request: TokenizeRequest):
        completion.check_model(request.model)
        if (request.prompt is None) == (request.messages is None):
            raise APIError("give exactly one of prompt or messages", 400, param="prompt")
        if request.messages is not None:
            _, ids = await chat.render_and_encode(request, chat._messages(request),
                                                  chat._template(request))
        else:
            ids = await completion.encode_async(request.prompt,
                                                add_special_tokens=bool(request.add_special_tokens))
        return {"tokens": ids, "count": len(ids), "max_model_len": config.max_model_len}

    @app.post("/detokenize")
    async def detokenize(request: DetokenizeRequest):
        completion.check_model(request.model)
        completion.check_token_ids(request.tokens, param="tokens")
        if completion.tokenizer is None:
            raise APIError("the server runs without a tokenizer (--skip-tokenizer-init)", 400)
        return {"prompt": completion.decode(request.tokens)}

    # ---------------------------------------------------------------- middleware
    app.add_middleware(LifecycleMiddleware, lifecycle=lifecycle)
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    app.add_middleware(CORSMiddleware, allow_origins=fa.allowed_origins,
                       allow_credentials=fa.allow_credentials, allow_methods=fa.allowed_methods,
                       allow_headers=fa.allowed_headers)
    for path in fa.middleware or []:
        add_import_middleware(app, path)
    return app


def load_middleware(path: str) -> Any:
    """--middleware: import `module.attribute`, which must be an ASGI middleware class or an
    async http middleware function. ValueError (naming the flag) otherwise."""
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ValueError(f"--middleware {path!r}: expected module.attribute")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"--middleware {path!r} cannot be imported: {e}") from None
    if not (inspect.isclass(obj) or inspect.iscoroutinefunction(obj)):
        raise ValueError(f"--middleware {path!r} is neither a class nor an async function")
    return obj


def add_import_middleware(app: FastAPI, path: str) -> None:
    obj = load_middleware(path)
    if inspect.isclass(obj):
        app.add_middleware(obj)
    else:
        app.middleware("http")(obj)

