"""The gRPC Embed RPC on an embedding model (a tiny random Llama, --task embed, in-process
AsyncLLMEngine): the vector equals HF's normalised last hidden state; Generate is refused
with INVALID_ARGUMENT, as are bad prompts; ListModels says the task."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
import torch
import torch.nn.functional as F

from llmcore.entrypoints.grpc._stubs import pb2, pb2_grpc


@pytest.fixture(scope="module")
def tiny_embed(tmp_path_factory):
    import transformers as tf

    cfg = tf.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, rms_norm_eps=1e-6)
    torch.manual_seed(1)
    model = tf.LlamaForCausalLM(cfg).float().eval()
    folder = str(tmp_path_factory.mktemp("tiny_grpc_embed"))
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def stub(tiny_embed):
    from llmcore.config import EngineArgs, FrontendArgs
    from llmcore.engine.async_engine import AsyncLLMEngine
    from llmcore.entrypoints.grpc.server import serve_grpc

    engine = AsyncLLMEngine.from_engine_args(EngineArgs(
        model=tiny_embed[1], task="embed", skip_tokenizer_init=True, cpu_kv_cache_space=0.02,
        served_model_name=["tiny"], disable_log_stats=True))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(
        serve_grpc(engine, FrontendArgs(host="127.0.0.1", grpc_port=0)), loop).result(60)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.llmcore_port}")
    yield pb2_grpc.GenerationStub(channel), engine
    channel.close()
    asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    engine.shutdown()


def test_embed_rpc(tiny_embed, stub):
    client, engine = stub
    ids = list(range(5, 30))
    r = client.Embed(pb2.EmbedRequest(token_ids=pb2.TokenIds(ids=ids)), timeout=60)
    with torch.inference_mode():
        h = tiny_embed[0].model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
    cos = F.cosine_similarity(torch.tensor(list(r.embedding)), F.normalize(h, dim=-1), dim=0)
    assert cos.item() >= 0.9999 and len(r.embedding) == 64
    assert r.model == "tiny" and r.usage.prompt_tokens == r.usage.total_tokens == len(ids)
    raw = client.Embed(pb2.EmbedRequest(token_ids=pb2.TokenIds(ids=ids), normalize=False),
                       timeout=60)
    assert abs(torch.tensor(list(raw.embedding)).norm().item() - h.norm().item()) < 1e-3
    assert [m.task for m in client.ListModels(pb2.ListModelsRequest()).models] == ["embed"]
    st = engine.engine.get_stats()
    assert st.num_running == 0 and st.kv_cache_usage == 0.0


@pytest.mark.parametrize("request_kw,match", [
    (dict(), "prompt"),
    (dict(token_ids=pb2.TokenIds(ids=[])), "empty"),
    (dict(token_ids=pb2.TokenIds(ids=[999])), "vocabulary"),
    (dict(token_ids=pb2.TokenIds(ids=[1] * 129)), "maximum model length"),
    (dict(text="hello"), "tokenizer"),
])
def test_embed_rpc_invalid(stub, request_kw, match):
    with pytest.raises(grpc.RpcError) as e:
        stub[0].Embed(pb2.EmbedRequest(**request_kw), timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and match in e.value.details()


def test_generate_refused_on_embed_model(stub):
    with pytest.raises(grpc.RpcError) as e:
        stub[0].GenerateUnary(pb2.GenerateRequest(token_ids=pb2.TokenIds(ids=[1, 2, 3])),
                              timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "serves embeddings" in e.value.details()
