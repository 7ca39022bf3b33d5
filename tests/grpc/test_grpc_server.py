"""The gRPC server (llmcore.v1.Generation) against the real engine, over loopback."""

from __future__ import annotations

import asyncio
import subprocess
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_testlib import FAKE, REFERENCE_MAX_TOKENS, REFERENCE_PROMPTS, wait_kv_free

PROMPTS = REFERENCE_PROMPTS
MAX_TOKENS = REFERENCE_MAX_TOKENS


def _req(pb2, prompt, **sp):
    sp.setdefault("temperature", 0.0)
    sp.setdefault("max_tokens", MAX_TOKENS)
    return pb2.GenerateRequest(text=prompt, sampling_params=pb2.SamplingParams(**sp))


def _collect(stream):
    text, ids, msgs = "", [], []
    for m in stream:
        msgs.append(m)
        for c in m.outputs:
            assert c.index == 0
            text += c.text
            ids.extend(c.token_ids)
    return text, ids, msgs


# ------------------------------------------------------------------ generation

@pytest.mark.parametrize("prompt", PROMPTS)
def test_stream_equals_offline_greedy(client, stubs, greedy_reference, prompt):
    pb2, _ = stubs
    text, ids, msgs = _collect(client.Generate(_req(pb2, prompt)))
    ref_text, ref_ids = greedy_reference(prompt, MAX_TOKENS)
    assert ids == ref_ids
    assert text == ref_text
    assert len(msgs) >= 2, "streamed in several messages"
    assert msgs[0].prompt_token_ids, "the first message carries the prompt ids"
    last = msgs[-1]
    assert last.finished and not any(m.finished for m in msgs[:-1])
    assert [c.finish_reason for m in msgs for c in m.outputs if c.finish_reason] in (
        [pb2.FINISH_REASON_LENGTH], [pb2.FINISH_REASON_STOP])
    assert last.usage.completion_tokens == len(ids)
    assert last.usage.prompt_tokens == len(msgs[0].prompt_token_ids)
    assert last.usage.total_tokens == last.usage.prompt_tokens + len(ids)
    assert last.model and last.request_id.startswith("grpc-")


@pytest.mark.parametrize("prompt", PROMPTS)
def test_unary_equals_offline_greedy(client, stubs, greedy_reference, prompt):
    pb2, _ = stubs
    r = client.GenerateUnary(_req(pb2, prompt, logprobs=2), timeout=60)
    ref_text, ref_ids = greedy_reference(prompt, MAX_TOKENS)
    (out,) = r.outputs
    assert list(out.token_ids) == ref_ids
    assert out.text == ref_text
    assert r.finished and out.finish_reason != pb2.FINISH_REASON_UNSPECIFIED
    assert r.usage.completion_tokens == len(ref_ids)
    # greedy: the chosen token is the most likely one
    assert len(out.logprobs) == len(ref_ids)
    for tid, pos in zip(out.token_ids, out.logprobs):
        assert pos.token.token_id == tid
        assert len(pos.top_logprobs) == 2
        assert pos.top_logprobs[0].token_id == tid
        assert pos.top_logprobs[0].logprob >= pos.top_logprobs[1].logprob


def test_stream_logprobs_and_request_id(client, stubs):
    pb2, _ = stubs
    req = _req(pb2, PROMPTS[0], logprobs=1, prompt_logprobs=1)
    req.request_id = "my-request-1"
    msgs = list(client.Generate(req))
    assert all(m.request_id == "my-request-1" for m in msgs)
    ids = [t for m in msgs for c in m.outputs for t in c.token_ids]
    lps = [p for m in msgs for c in m.outputs for p in c.logprobs]
    assert [p.token.token_id for p in lps] == ids
    assert all(p.token.logprob <= 0.0 for p in lps)
    if not FAKE:
        assert len(msgs[0].prompt_logprobs) == len(msgs[0].prompt_token_ids)


def test_stream_n2_and_stop(client, stubs):
    pb2, _ = stubs
    req = _req(pb2, PROMPTS[0], n=2, temperature=0.8, seed=1, max_tokens=8)
    texts = {0: "", 1: ""}
    finished = set()
    for m in client.Generate(req):
        for c in m.outputs:
            texts[c.index] += c.text
            if c.finish_reason:
                finished.add(c.index)
    assert finished == {0, 1}


def test_chat_streams(client, stubs):
    pb2, _ = stubs
    req = pb2.ChatRequest(messages=[pb2.ChatMessage(role="user", content="Say hello.")],
                          sampling_params=pb2.SamplingParams(temperature=0, max_tokens=8))
    text, ids, msgs = _collect(client.Chat(req))
    assert msgs[-1].finished and ids and text
    assert msgs[-1].usage.completion_tokens == len(ids)


# ------------------------------------------------------------------ other RPCs

def test_tokenize_round_trip(client, stubs):
    pb2, _ = stubs
    text = "Hello, world! gRPC tokenization round trip."
    t = client.Tokenize(pb2.TokenizeRequest(text=text, add_special_tokens=False))
    assert t.count == len(t.token_ids) == len(t.tokens) > 0
    assert t.max_model_len > 0
    d = client.Detokenize(pb2.DetokenizeRequest(token_ids=t.token_ids))
    assert d.text == text


def test_health(client, channel, stubs):
    pb2, _ = stubs
    assert client.Health(pb2.HealthRequest()).status == pb2.HealthResponse.SERVING
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "llmcore.v1.Generation"):
        r = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert r.status == health_pb2.HealthCheckResponse.SERVING


def test_server_reflection(channel):
    """Generic clients (grpcurl, Postman) discover the API without proto/: reflection lists
    the services and resolves Generate's request and response types."""
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import \
        ProtoReflectionDescriptorDatabase

    db = ProtoReflectionDescriptorDatabase(channel)
    assert {"llmcore.v1.Generation", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= set(db.get_services())
    service = DescriptorPool(db).FindServiceByName("llmcore.v1.Generation")
    method = service.methods_by_name["Generate"]
    assert method.server_streaming and not method.client_streaming
    assert method.input_type.full_name == "llmcore.v1.GenerateRequest"
    assert "sampling_params" in method.input_type.fields_by_name
    assert method.output_type.full_name == "llmcore.v1.GenerateResponse"


def test_list_models_and_server_info(client, stubs, engine):
    pb2, _ = stubs
    models = client.ListModels(pb2.ListModelsRequest()).models
    assert [m.id for m in models] == list(engine.model_info.served_model_names)
    assert models[0].max_model_len == engine.model_info.max_model_len
    info = client.GetServerInfo(pb2.GetServerInfoRequest())
    assert info.model == models[0].id
    assert info.max_model_len == engine.model_info.max_model_len
    assert info.block_size == engine.model_info.block_size
    assert info.num_total_blocks > 0
    assert info.num_free_blocks <= info.num_total_blocks
    r = client.GenerateUnary(pb2.GenerateRequest(model=models[0].id, text="Hi",
                                                 sampling_params=pb2.SamplingParams(max_tokens=2)))
    assert r.model == models[0].id


# ------------------------------------------------------------------ errors

def _code(fn, *a, **kw):
    """Call a unary or streaming RPC that must fail; return (code, details)."""
    from google.protobuf.message import Message

    with pytest.raises(grpc.RpcError) as ei:
        r = fn(*a, **kw)
        if not isinstance(r, Message):
            list(r)
    return ei.value.code(), ei.value.details()


@pytest.mark.parametrize("sp, field", [
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(top_k=0), "top_k"),
    (dict(early_stopping="maybe"), "early_stopping"),
    (dict(logprobs=1000), "logprobs"),
])
def test_invalid_sampling_params(client, stubs, sp, field):
    pb2, _ = stubs
    if FAKE and field == "logprobs":
        pytest.skip("--max-logprobs is checked by the real engine")
    req = pb2.GenerateRequest(text="Hi", sampling_params=pb2.SamplingParams(**sp))
    for rpc in (client.Generate, client.GenerateUnary):
        code, details = _code(rpc, req)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert field in details


def test_invalid_prompt(client, stubs):
    pb2, _ = stubs
    code, details = _code(client.Generate, pb2.GenerateRequest())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "prompt" in details
    code, details = _code(client.GenerateUnary,
                          pb2.GenerateRequest(token_ids=pb2.TokenIds(ids=[1, 10_000_000])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "token_ids" in details
    code, details = _code(client.Detokenize, pb2.DetokenizeRequest(token_ids=[10_000_000]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "token_ids" in details
    code, details = _code(client.Chat, pb2.ChatRequest())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "messages" in details
    code, details = _code(client.Chat, pb2.ChatRequest(
        messages=[pb2.ChatMessage(role="user", content="hi")], chat_template="{{ 1 }}"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "chat_template" in details


def test_unknown_model(client, stubs):
    pb2, _ = stubs
    for rpc, req in ((client.Generate, pb2.GenerateRequest(model="nope", text="Hi")),
                     (client.GenerateUnary, pb2.GenerateRequest(model="nope", text="Hi")),
                     (client.Tokenize, pb2.TokenizeRequest(model="nope", text="Hi"))):
        code, details = _code(rpc, req)
        assert code == grpc.StatusCode.NOT_FOUND and "nope" in details


class _DeadEngine:
    """The real engine seen as dead (its loop died): every attribute but `errored` passes."""

    def __init__(self, engine):
        self._engine = engine

    def __getattr__(self, name):
        return getattr(self._engine, name)

    @property
    def errored(self):
        return True

    async def check_health(self):
        raise RuntimeError("engine loop is dead")


def test_unavailable_when_engine_dead(engine, make_server, stubs):
    pb2, pb2_grpc = stubs
    s = make_server(_DeadEngine(engine))
    with grpc.insecure_channel(s.target) as ch:
        stub = pb2_grpc.GenerationStub(ch)
        code, details = _code(stub.Generate, _req(pb2, "Hi"))
        assert code == grpc.StatusCode.UNAVAILABLE and "dead" in details
        assert stub.Health(pb2.HealthRequest()).status == pb2.HealthResponse.NOT_SERVING
        r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""))
        assert r.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_unavailable_when_overloaded(make_server, stubs):
    pb2, pb2_grpc = stubs
    s = make_server(grpc_max_inflight=1)
    with grpc.insecure_channel(s.target) as ch:
        stub = pb2_grpc.GenerationStub(ch)
        first = stub.Generate(_req(pb2, "Hi", max_tokens=200, ignore_eos=True))
        next(first)  # now one request is in flight
        code, details = _code(stub.GenerateUnary, _req(pb2, "Hi"))
        assert code == grpc.StatusCode.UNAVAILABLE and "overloaded" in details
        first.cancel()


def test_api_key(make_server, stubs):
    pb2, pb2_grpc = stubs
    s = make_server(api_key="sekret")
    with grpc.insecure_channel(s.target) as ch:
        stub = pb2_grpc.GenerationStub(ch)
        req = _req(pb2, "Hi", max_tokens=2)
        for md in (None, [("authorization", "Bearer wrong")], [("authorization", "sekret")]):
            for rpc in (stub.Generate, stub.GenerateUnary, stub.ListModels):
                r = req if rpc is not stub.ListModels else pb2.ListModelsRequest()
                code, _ = _code(rpc, r, metadata=md)
                assert code == grpc.StatusCode.UNAUTHENTICATED
        ok = [("authorization", "Bearer sekret")]
        assert stub.GenerateUnary(req, metadata=ok).finished
        assert list(stub.Generate(req, metadata=ok))[-1].finished
        # reflection describes the API, so it needs the key like the API does
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            list(refl.ServerReflectionInfo(iter([ask])))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        names = {s.name for r in refl.ServerReflectionInfo(iter([ask]), metadata=ok)
                 for s in r.list_services_response.service}
        assert "llmcore.v1.Generation" in names
        # probes need no key
        assert stub.Health(pb2.HealthRequest()).status == pb2.HealthResponse.SERVING
        r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert r.status == health_pb2.HealthCheckResponse.SERVING


def test_message_size_limit(make_server, stubs):
    pb2, pb2_grpc = stubs
    s = make_server(grpc_max_message_size=1024)
    with grpc.insecure_channel(s.target) as ch:
        stub = pb2_grpc.GenerationStub(ch)
        code, _ = _code(stub.GenerateUnary, _req(pb2, "word " * 1000))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.GenerateUnary(_req(pb2, "Hi", max_tokens=2)).finished  # small ones pass


def test_tls(make_server, stubs, tmp_path):
    pb2, pb2_grpc = stubs
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    s = make_server(ssl_keyfile=str(key), ssl_certfile=str(cert))
    creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(s.target, creds) as ch:
        stub = pb2_grpc.GenerationStub(ch)
        assert stub.GenerateUnary(_req(pb2, "Hi", max_tokens=2), timeout=30).finished
    with grpc.insecure_channel(s.target) as ch:
        code, _ = _code(pb2_grpc.GenerationStub(ch).ListModels, pb2.ListModelsRequest(), timeout=5)
        assert code == grpc.StatusCode.UNAVAILABLE

    # --ssl-cert-reqs 2 (ssl.CERT_REQUIRED): clients need a certificate the CA signed.
    m = make_server(ssl_keyfile=str(key), ssl_certfile=str(cert), ssl_ca_certs=str(cert),
                    ssl_cert_reqs=2)
    mutual = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes(),
                                          private_key=key.read_bytes(),
                                          certificate_chain=cert.read_bytes())
    with grpc.secure_channel(m.target, mutual) as ch:
        assert pb2_grpc.GenerationStub(ch).ListModels(pb2.ListModelsRequest(), timeout=30).models
    with grpc.secure_channel(m.target, creds) as ch:
        code, _ = _code(pb2_grpc.GenerationStub(ch).ListModels, pb2.ListModelsRequest(), timeout=5)
        assert code == grpc.StatusCode.UNAVAILABLE


# ------------------------------------------------------------------ cancellation

def test_cancel_frees_kv(client, stubs):
    pb2, _ = stubs
    stream = client.Generate(_req(pb2, PROMPTS[0], max_tokens=1000, ignore_eos=True))
    next(stream)
    next(stream)
    busy = client.GetServerInfo(pb2.GetServerInfoRequest())
    assert busy.num_running + busy.num_waiting >= 1 and busy.kv_cache_usage > 0
    stream.cancel()
    info = wait_kv_free(client, pb2, timeout=10)
    assert info.num_running == 0 and info.kv_cache_usage == 0.0


def test_deadline_aborts(client, stubs):
    pb2, _ = stubs
    t0 = time.monotonic()
    code, _ = _code(client.GenerateUnary, _req(pb2, PROMPTS[1], max_tokens=1000, ignore_eos=True),
                    timeout=0.5)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 5
    info = wait_kv_free(client, pb2, timeout=10)
    assert info.num_running == 0 and info.kv_cache_usage == 0.0


async def test_50_streams_25_cancelled(server, stubs):
    pb2, pb2_grpc = stubs
    async with grpc.aio.insecure_channel(server.target) as ch:
        stub = pb2_grpc.GenerationStub(ch)

        async def complete(i):
            req = _req(pb2, f"Story number {i}:", max_tokens=8, ignore_eos=True)
            msgs = [m async for m in stub.Generate(req, timeout=120)]
            assert msgs[-1].finished
            return sum(len(c.token_ids) for m in msgs for c in m.outputs)

        async def cancelled(i):
            req = _req(pb2, f"Cancelled story {i}:", max_tokens=2000, ignore_eos=True)
            call = stub.Generate(req, timeout=120)
            async for _ in call:
                break  # got the first message: the request is running
            call.cancel()
            return None

        results = await asyncio.gather(*[(complete if i % 2 == 0 else cancelled)(i)
                                         for i in range(50)])
        done = [r for r in results if r is not None]
        assert len(done) == 25 and all(r == 8 for r in done)

        deadline = time.monotonic() + 20
        while True:
            info = await stub.GetServerInfo(pb2.GetServerInfoRequest())
            if (info.num_running == 0 and info.num_waiting == 0 and info.kv_cache_usage == 0.0) \
                    or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert info.num_running == 0 and info.num_waiting == 0
        assert info.kv_cache_usage == 0.0
        assert info.num_free_blocks == info.num_total_blocks
