"""The gRPC front end: llmcore.v1.Generation (proto/llmcore/v1/llmcore.proto) on grpc.aio.

`serve_grpc(engine, args, api_key)` starts a server on an EngineClient (the same engine
the HTTP server uses, when both run) and returns it listening; the caller awaits
`server.wait_for_termination()` and `server.stop(grace)`.

Standalone:  python -m llmcore.entrypoints.grpc.server [--model PATH] --grpc-port 50051
(the same flags as llmcore-server; --grpc-port defaults to 50051 here).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import sys
import uuid
from typing import Any, Optional

import grpc
from grpc_health.v1 import health as _health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from llmcore.entrypoints.chat_template import (load_chat_template,
                                               render_chat_and_encode)
from llmcore.entrypoints.grpc._stubs import pb2, pb2_grpc
from llmcore.entrypoints.request_log import prompt_for_log
from llmcore.entrypoints.grpc.convert import (RpcError, _full_response, _invalid,
                                              _is_unavailable_error, _StreamState,
                                              guided_error_message, sampling_params_from_proto)
from llmcore.entrypoints.lifecycle import RequestTerminated, ServerLifecycle
from llmcore.entrypoints.request_validation import first_out_of_vocab, streaming_conflict
from llmcore.tokenizer.pool import encode_text
from llmcore.pooling_params import PoolingParams

logger = logging.getLogger("llmcore.grpc")

SERVICE_NAME = "llmcore.v1.Generation"
DEFAULT_GRPC_PORT = 50051
# Methods that answer without an API key (probes carry no secrets).
_NO_AUTH_METHODS = ("/grpc.health.v1.Health/", f"/{SERVICE_NAME}/Health")


class GenerationServicer(pb2_grpc.GenerationServicer):
    def __init__(self, engine: Any, args: Any, max_inflight: Optional[int] = None,
                 lifecycle: Optional[ServerLifecycle] = None, *,
                 log_requests: bool = False, max_log_len: Optional[int] = None):
        self.engine = engine
        self.args = args
        self.log_requests = log_requests
        self.max_log_len = max_log_len
        self.lifecycle = lifecycle if lifecycle is not None else ServerLifecycle(engine)
        info = engine.model_info
        self.model_names = list(info.served_model_names) or [info.model_path]
        self.max_inflight = max_inflight
        self.inflight = 0
        self._chat_template: Optional[str] = None
        if getattr(args, "chat_template", None):
            self._chat_template = load_chat_template(args.chat_template)

    # -- helpers
    def _check_model(self, model: str) -> str:
        if model and model not in self.model_names:
            raise RpcError(grpc.StatusCode.NOT_FOUND,
                           f"model: {model!r} not found; this server serves {self.model_names}")
        return self.model_names[0]

    def _check_alive(self) -> None:
        refused = self.lifecycle.refusal()
        if refused is not None:
            raise RpcError(grpc.StatusCode.UNAVAILABLE, refused.message)

    def _vocab_limit(self) -> int:
        tok = self.engine.tokenizer
        n = int(self.engine.model_info.vocab_size or 0)
        if tok is not None:
            with contextlib.suppress(Exception):
                n = max(n, len(tok))
        return n

    def _check_ids(self, ids: list, field: str) -> None:
        limit = self._vocab_limit()
        i = first_out_of_vocab(ids, limit)
        if i is not None:
            raise _invalid(f"{field}[{i}]: token id {ids[i]} is out of the vocabulary "
                           f"(size {limit})")

    async def _tokenizer_call(self, fn: Any, *args: Any) -> Any:
        """fn(tokenizer, *args) in the engine's tokenizer pool (off the event loop with
        --tokenizer-pool-size > 0), inline for engines without one."""
        pool = getattr(self.engine, "tokenizer_pool", None)
        if pool is None:
            return fn(self.engine.tokenizer, *args)
        return await pool.run(fn, *args)

    async def _prompt(self, request: Any) -> Any:
        kind = request.WhichOneof("prompt")
        if kind == "text":
            if self.engine.tokenizer is None or not request.text:
                return request.text  # the engine refuses it (INVALID_ARGUMENT)
            # tokenized here, so the engine does not tokenize in the event loop
            ids = await self._tokenizer_call(encode_text, request.text, True)
            return {"prompt": request.text, "prompt_token_ids": ids}
        if kind == "token_ids":
            ids = list(request.token_ids.ids)
            if not ids:
                raise _invalid("token_ids: must not be empty")
            self._check_ids(ids, "token_ids.ids")
            return {"prompt_token_ids": ids}
        raise _invalid("prompt: set one of text or token_ids")

    def _params(self, request: Any, streaming: bool):
        params = sampling_params_from_proto(
            request.sampling_params, has_msg=request.HasField("sampling_params"),
            defaults=getattr(self.engine.model_info, "sampling_defaults", None))
        conflict = streaming_conflict(getattr(params, "n", 1), getattr(params, "best_of", None),
                                      bool(getattr(params, "use_beam_search", False))) \
            if streaming else None
        if conflict == "best_of":
            raise _invalid("sampling_params.best_of: must equal n in a streaming RPC; "
                           "use GenerateUnary")
        if conflict == "use_beam_search":
            raise _invalid("sampling_params.use_beam_search: not supported in a streaming RPC; "
                           "use GenerateUnary")
        return params

    async def _abort(self, context: Any, e: RpcError):
        await context.abort(e.code, e.message)

    def _log(self, request_id: str, prompt: Any, params: Any, priority: int) -> None:
        if self.log_requests:
            text, ids = prompt_for_log(prompt, self.max_log_len)
            logger.info("request %s: prompt=%r prompt_token_ids=%s params=%s priority=%d",
                        request_id, text, ids, params, priority)

    async def _run(self, prompt: Any, params: Any, request_id: str, priority: int = 0):
        """Yield the engine's RequestOutputs; map engine errors to RpcError; abort on exit.
        priority 0 is the engine's default, so it is passed only when another is asked for."""
        if self.max_inflight is not None and self.inflight >= self.max_inflight:
            raise RpcError(grpc.StatusCode.UNAVAILABLE,
                           f"server overloaded: {self.inflight} requests in flight "
                           f"(limit {self.max_inflight}); retry later")
        self._check_alive()
        self.inflight += 1
        finished = False
        got_output = False
        try:
            try:
                if priority:
                    gen = self.engine.generate(prompt, params, request_id, priority=priority)
                else:
                    gen = self.engine.generate(prompt, params, request_id)
            except ValueError as e:  # validated synchronously, nothing queued
                raise _invalid(str(e)) from None
            gen = self.lifecycle.track(gen)
            async with contextlib.aclosing(gen):
                try:
                    async for out in gen:
                        got_output = True
                        finished = bool(out.finished)
                        yield out
                except RpcError:
                    raise
                except (ValueError, TypeError) as e:
                    if got_output:
                        raise
                    raise _invalid(guided_error_message(str(e))) from None
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except RpcError:
            raise
        except RequestTerminated as e:
            raise RpcError(grpc.StatusCode.UNAVAILABLE, e.message) from None
        except Exception as e:
            if self.engine.errored or _is_unavailable_error(e):
                raise RpcError(grpc.StatusCode.UNAVAILABLE, f"engine unavailable: {e}") from None
            logger.exception("request %s failed", request_id)
            raise RpcError(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}") from None
        finally:
            self.inflight -= 1
            if not finished:
                # Client cancelled, deadline passed, or an error: free the KV blocks now.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.engine.abort(request_id))

    @staticmethod
    def _request_id(given: str) -> str:
        return given or f"grpc-{uuid.uuid4().hex}"

    async def _stream(self, prompt: Any, params: Any, request_id: str, model: str, context: Any,
                      priority: int = 0):
        state = _StreamState(request_id, model, params)
        self._log(request_id, prompt, params, priority)
        async for out in self._run(prompt, params, request_id, priority):
            msg = state.delta(out)
            if msg is not None:
                yield msg

    # -- RPCs
    async def Generate(self, request, context):
        # closed with the RPC (a cancelled client aborts the request now, not at GC)
        async with contextlib.aclosing(self._streaming_rpc(request, context, self._prompt)) as msgs:
            async for msg in msgs:
                yield msg

    async def _streaming_rpc(self, request, context, make_prompt):
        """Generate and Chat: they differ only in how the prompt is built."""
        try:
            model = self._check_model(request.model)
            prompt = await make_prompt(request)
            params = self._params(request, streaming=True)
            rid = self._request_id(request.request_id)
            with self.lifecycle.admitted():
                async for msg in self._stream(prompt, params, rid, model, context,
                                              request.priority):
                    yield msg
        except RequestTerminated as e:
            await self._abort(context, RpcError(grpc.StatusCode.UNAVAILABLE, e.message))
        except RpcError as e:
            await self._abort(context, e)

    async def GenerateUnary(self, request, context):
        try:
            model = self._check_model(request.model)
            prompt = await self._prompt(request)
            params = self._params(request, streaming=False)
            rid = self._request_id(request.request_id)
            last = None
            with self.lifecycle.admitted():
                self._log(rid, prompt, params, request.priority)
                async for out in self._run(prompt, params, rid, request.priority):
                    last = out
            if last is None:
                raise RpcError(grpc.StatusCode.INTERNAL, "the engine returned no output")
            return _full_response(last, rid, model, params)
        except RequestTerminated as e:
            await self._abort(context, RpcError(grpc.StatusCode.UNAVAILABLE, e.message))
        except RpcError as e:
            await self._abort(context, e)

    async def Chat(self, request, context):
        # closed with the RPC (a cancelled client aborts the request now, not at GC)
        async with contextlib.aclosing(self._streaming_rpc(request, context, self._chat_prompt)) as msgs:
            async for msg in msgs:
                yield msg

    async def _chat_prompt(self, request: Any) -> Any:
        if not request.messages:
            raise _invalid("messages: must not be empty")
        messages = []
        for i, m in enumerate(request.messages):
            if not m.role:
                raise _invalid(f"messages[{i}].role: must not be empty")
            messages.append({"role": m.role, "content": m.content})
        template = self._chat_template or self.engine.chat_template
        if request.HasField("chat_template"):
            if not getattr(self.args, "trust_request_chat_template", False):
                raise _invalid("chat_template: request chat templates are not allowed on this server "
                               "(--trust-request-chat-template is off)")
            template = request.chat_template
        add_gen = request.add_generation_prompt if request.HasField("add_generation_prompt") else True
        tok = self.engine.tokenizer
        if tok is None:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, "the server has no tokenizer")
        if template is None:
            raise _invalid("chat_template: the model has no chat template and the server was "
                           "started without --chat-template")
        try:
            # The template writes the special tokens (BOS ...) itself.
            _, ids = await self._tokenizer_call(render_chat_and_encode, template, messages, False,
                                                add_gen, False, {})
        except Exception as e:  # noqa: BLE001 - any template failure is the request's fault
            raise _invalid(f"chat_template: {e}") from None
        return {"prompt_token_ids": list(ids)}

    async def Embed(self, request, context):
        try:
            model = self._check_model(request.model)
            prompt = await self._prompt(request)
            params = PoolingParams(normalize=request.normalize
                                   if request.HasField("normalize") else None)
            rid = self._request_id(request.request_id)
            last = None
            with self.lifecycle.admitted():
                self._log(rid, prompt, params, request.priority)
                async for out in self._run(prompt, params, rid, request.priority):
                    last = out
            if last is None:
                raise RpcError(grpc.StatusCode.INTERNAL, "the engine returned no output")
            n = len(last.prompt_token_ids)
            return pb2.EmbedResponse(request_id=rid, model=model,
                                     embedding=last.outputs.data.tolist(),
                                     usage=pb2.Usage(prompt_tokens=n, total_tokens=n))
        except RequestTerminated as e:
            await self._abort(context, RpcError(grpc.StatusCode.UNAVAILABLE, e.message))
        except RpcError as e:
            await self._abort(context, e)

    async def Tokenize(self, request, context):
        try:
            self._check_model(request.model)
            tok = self._tokenizer()
            add = request.add_special_tokens if request.HasField("add_special_tokens") else True
            ids = await self._tokenizer_call(encode_text, request.text, add)
            tokens = [str(t) for t in tok.convert_ids_to_tokens(ids)]
            return pb2.TokenizeResponse(token_ids=ids, tokens=tokens, count=len(ids),
                                        max_model_len=int(self.engine.model_info.max_model_len))
        except RpcError as e:
            await self._abort(context, e)

    async def Detokenize(self, request, context):
        try:
            self._check_model(request.model)
            tok = self._tokenizer()
            ids = list(request.token_ids)
            self._check_ids(ids, "token_ids")
            skip = request.skip_special_tokens if request.HasField("skip_special_tokens") else True
            return pb2.DetokenizeResponse(text=tok.decode(ids, skip_special_tokens=skip))
        except RpcError as e:
            await self._abort(context, e)

    def _tokenizer(self):
        tok = self.engine.tokenizer
        if tok is None:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION,
                           "the server was started with --skip-tokenizer-init: no tokenizer")
        return tok

    async def ListModels(self, request, context):
        info = self.engine.model_info
        return pb2.ListModelsResponse(models=[
            pb2.ModelCard(id=name, root=str(info.model_path), owned_by="llmcore",
                          max_model_len=int(info.max_model_len),
                          task=getattr(info, "task", "generate"))
            for name in self.model_names])

    async def health_status(self) -> tuple[bool, str]:
        if self.engine.errored:
            return False, "engine is dead"
        refused = self.lifecycle.refusal()
        if refused is not None:
            return False, refused.message
        try:
            await asyncio.wait_for(self.engine.check_health(), timeout=5)
        except Exception as e:
            return False, f"engine health check failed: {type(e).__name__}: {e}"
        return True, ""

    async def Health(self, request, context):
        ok, why = await self.health_status()
        return pb2.HealthResponse(
            status=pb2.HealthResponse.SERVING if ok else pb2.HealthResponse.NOT_SERVING, message=why)

    async def GetServerInfo(self, request, context):
        import llmcore
        info = self.engine.model_info
        s = self.engine.get_stats()
        return pb2.ServerInfo(
            version=llmcore.__version__, model=self.model_names[0],
            served_model_names=self.model_names, model_path=str(info.model_path),
            max_model_len=int(info.max_model_len), vocab_size=int(info.vocab_size),
            dtype=str(info.dtype), block_size=int(info.block_size),
            max_logprobs=int(info.max_logprobs), num_total_blocks=int(s.num_total_blocks),
            num_free_blocks=int(s.num_free_blocks), kv_cache_usage=float(s.kv_cache_usage),
            num_running=int(s.num_running), num_waiting=int(s.num_waiting),
            num_swapped=int(s.num_swapped), prefix_cache_hit_rate=float(s.prefix_cache_hit_rate))


# ---------------------------------------------------------------------------------------------
# health, auth

class _HealthServicer(_health.aio.HealthServicer):
    """grpc.health.v1, reflecting the engine: NOT_SERVING once it is dead."""

    def __init__(self, gen: GenerationServicer):
        super().__init__()
        self._gen = gen

    async def refresh(self) -> None:
        ok, _ = await self._gen.health_status()
        status = (health_pb2.HealthCheckResponse.SERVING if ok
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", SERVICE_NAME):
            await self.set(name, status)

    async def Check(self, request, context):
        await self.refresh()
        return await super().Check(request, context)


def _deny_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str):
    async def deny(request, context):
        await context.abort(code, message)

    kw = dict(request_deserializer=handler.request_deserializer,
              response_serializer=handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(deny, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(deny, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(deny, **kw)
    return grpc.stream_stream_rpc_method_handler(deny, **kw)


class _ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Requires metadata `authorization: Bearer <api key>` (health checks excepted)."""

    def __init__(self, api_key: str):
        self._expected = f"Bearer {api_key}".encode()

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method or ""
        if method.startswith(_NO_AUTH_METHODS[0]) or method == _NO_AUTH_METHODS[1]:
            return await continuation(handler_call_details)
        got = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key.lower() == "authorization":
                got = value
                break
        if got is not None:
            got_b = got.encode() if isinstance(got, str) else bytes(got)
            if hmac.compare_digest(got_b, self._expected):
                return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        msg = ("missing API key: send metadata 'authorization: Bearer <key>'" if got is None
               else "invalid API key")
        return _deny_handler(handler, grpc.StatusCode.UNAUTHENTICATED, msg)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _server_credentials(args: Any) -> Optional[grpc.ServerCredentials]:
    if not getattr(args, "ssl_certfile", None):
        return None
    if not getattr(args, "ssl_keyfile", None):
        raise ValueError("--ssl-keyfile and --ssl-certfile must be given together")
    ca = _read(args.ssl_ca_certs) if getattr(args, "ssl_ca_certs", None) else None
    # ssl.CERT_REQUIRED (2): clients must present a certificate signed by --ssl-ca-certs.
    # gRPC has no "optional" client certificates: CERT_OPTIONAL (1) does not ask for one.
    require = int(getattr(args, "ssl_cert_reqs", 0) or 0) == 2
    if require and ca is None:
        raise ValueError("--ssl-cert-reqs 2 needs --ssl-ca-certs")
    return grpc.ssl_server_credentials([(_read(args.ssl_keyfile), _read(args.ssl_certfile))],
                                       root_certificates=ca, require_client_auth=require)


# ---------------------------------------------------------------------------------------------
# entry points

async def serve_grpc(engine: Any, args: Any, api_key: Optional[str] = None,
                     lifecycle: Optional[ServerLifecycle] = None, *,
                     log_requests: bool = False,
                     max_log_len: Optional[int] = None) -> grpc.aio.Server:
    """Start the gRPC server on `engine` at args.host:args.grpc_port and return it, listening.

    args: FrontendArgs (grpc_port, host, grpc_max_message_size, grpc_max_inflight, ssl_*,
    chat_template, trust_request_chat_template). api_key: required as `authorization: Bearer
    <key>` (on every method but the health checks, server reflection included); when None,
    args.api_key. lifecycle: shared with the HTTP server when both run (draining, engine
    death); a new one watching `engine` when None.
    log_requests / max_log_len: log each request (prompt cut to max_log_len characters or
    token ids), as --disable-log-requests off / --max-log-len.
    With grpc_port 0 a free port is chosen: it is in `server.llmcore_port`.
    """
    max_size = int(getattr(args, "grpc_max_message_size", 16 * 1024 * 1024))
    options = [
        ("grpc.max_receive_message_length", max_size),
        ("grpc.max_send_message_length", max_size),
        ("grpc.so_reuseport", 0),  # a port in use is an error, not silently shared
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]
    api_key = api_key or getattr(args, "api_key", None)
    interceptors = [_ApiKeyInterceptor(api_key)] if api_key else []
    server = grpc.aio.server(options=options, interceptors=interceptors)
    owns_lifecycle = lifecycle is None
    lifecycle = lifecycle if lifecycle is not None else ServerLifecycle(engine)
    lifecycle.start()
    servicer = GenerationServicer(engine, args, lifecycle=lifecycle,
                                  max_inflight=getattr(args, "grpc_max_inflight", None),
                                  log_requests=log_requests, max_log_len=max_log_len)
    pb2_grpc.add_GenerationServicer_to_server(servicer, server)
    health = _HealthServicer(servicer)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    # Server reflection: grpcurl and other generic clients discover the API without proto/.
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)

    host = getattr(args, "host", None) or "[::]"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    port = args.grpc_port if args.grpc_port is not None else DEFAULT_GRPC_PORT
    address = f"{host}:{port}"
    creds = _server_credentials(args)
    try:
        bound = (server.add_secure_port(address, creds) if creds is not None
                 else server.add_insecure_port(address))
    except RuntimeError as e:
        raise OSError(f"gRPC: cannot listen on {address}: {e}") from None
    if not bound:
        raise OSError(f"gRPC: cannot listen on {address}")
    await server.start()
    await health.refresh()

    async def watch_health():
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(Exception):
                await health.refresh()

    watcher = asyncio.get_running_loop().create_task(watch_health())
    orig_stop = server.stop

    async def stop(grace: Optional[float]):
        watcher.cancel()
        if owns_lifecycle:
            lifecycle.close()
        return await orig_stop(grace)

    server.stop = stop  # type: ignore[method-assign]
    server.llmcore_port = bound  # type: ignore[attr-defined]
    server.llmcore_servicer = servicer  # type: ignore[attr-defined]
    logger.info("gRPC server (%s) listening on %s:%d%s", SERVICE_NAME, host, bound,
                " with TLS" if creds is not None else "")
    return server


def main(argv=None) -> int:
    """The standalone gRPC server: llmcore-server's start-up and lifecycle, gRPC only."""
    from llmcore.entrypoints.cli import StartupError, prepare, run_to_exit

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def listening(_http_port, grpc_port) -> None:
        print(f"llmcore gRPC server listening on port {grpc_port}", flush=True)

    try:
        engine_args, fe, api_key, chat_template = prepare(argv)
        if fe.grpc_port is None:
            fe.grpc_port = DEFAULT_GRPC_PORT
        fe.grpc_only = True
        return run_to_exit(engine_args, fe, api_key, chat_template, on_listening=listening)
    except StartupError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code


if __name__ == "__main__":
    sys.exit(main())
