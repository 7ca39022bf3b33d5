"""POST /v1/embeddings with the official `openai` client: a tiny random Llama (SmolLM2's
tokenizer, so text inputs work) served with --task embed, compared with HF transformers'
final hidden states; 400s; the generate-model server refuses embeddings."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest
import torch
import torch.nn.functional as F

from server_helpers import API_KEY, ROOT_PATH

MAX_LEN = 64
TEXTS = ["The capital of France is Paris.", "Embeddings map text to vectors", "hi"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, hf_gguf_tokenizer):
    """(HF model, folder): random weights over SmolLM2's vocabulary and tokenizer."""
    import transformers as tf

    tok = hf_gguf_tokenizer
    cfg = tf.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, rms_norm_eps=1e-6,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(cfg).float().eval()
    folder = str(tmp_path_factory.mktemp("tiny_embed_server"))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def embed_server(start_module_server, tiny_model):
    return start_module_server("--model", tiny_model[1], "--task", "embed", "--served-model-name",
                               "tiny-embed", "--max-model-len", str(MAX_LEN),
                               "--cpu-kv-cache-space", "0.05", "--swap-space", "0")


@pytest.fixture(scope="module")
def client(embed_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=embed_server.url + "/v1", api_key="unused", max_retries=0,
                         timeout=120)


def _ids(server, text: str) -> list:
    r = httpx.post(server.url + "/tokenize", json={"prompt": text}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["tokens"]


def _hf_last(model, ids: list) -> torch.Tensor:
    with torch.inference_mode():
        h = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1].float()
    return F.normalize(h, dim=-1)


def _cos(vec, ref: torch.Tensor) -> float:
    return F.cosine_similarity(torch.tensor(vec, dtype=torch.float32), ref, dim=0).item()


def test_string_list_and_token_inputs(client, embed_server, tiny_model):
    ids = [_ids(embed_server, t) for t in TEXTS]
    refs = [_hf_last(tiny_model[0], i) for i in ids]
    one = client.embeddings.create(model="tiny-embed", input=TEXTS[0], encoding_format="float")
    assert one.object == "list" and one.model == "tiny-embed" and len(one.data) == 1
    assert one.data[0].object == "embedding" and one.data[0].index == 0
    assert len(one.data[0].embedding) == 64
    assert one.usage.prompt_tokens == one.usage.total_tokens == len(ids[0])
    many = client.embeddings.create(model="tiny-embed", input=TEXTS, encoding_format="float")
    assert [d.index for d in many.data] == [0, 1, 2]
    assert many.usage.prompt_tokens == sum(len(i) for i in ids)
    cos = [_cos(d.embedding, r) for d, r in zip(many.data, refs)]
    assert min(cos) >= 0.9999, cos
    assert np.allclose(many.data[0].embedding, one.data[0].embedding, atol=1e-6)
    assert abs(np.linalg.norm(many.data[1].embedding) - 1.0) < 1e-5
    # token ids: one list, and a list of lists
    tok_one = client.embeddings.create(model="tiny-embed", input=ids[1], encoding_format="float")
    assert np.allclose(tok_one.data[0].embedding, many.data[1].embedding, atol=1e-6)
    tok_many = client.embeddings.create(model="tiny-embed", input=ids, encoding_format="float")
    for a, b in zip(tok_many.data, many.data):
        assert np.allclose(a.embedding, b.embedding, atol=1e-6)


def test_base64_decodes_to_the_same_floats(client, embed_server):
    """One input per request: an idle engine runs it alone, in the same batch shape each
    time, so the floats are bit-identical (several inputs may be batched differently from
    one request to the next, which moves the last bits of the GEMMs)."""
    floats = client.embeddings.create(model="tiny-embed", input=TEXTS[0], encoding_format="float")
    # the client asks for base64 itself when no format is given, and decodes it
    default = client.embeddings.create(model="tiny-embed", input=TEXTS[0])
    assert np.array_equal(np.asarray(default.data[0].embedding, dtype=np.float32),
                          np.asarray(floats.data[0].embedding, dtype=np.float32))
    two = client.embeddings.create(model="tiny-embed", input=TEXTS[:2])
    assert np.allclose(two.data[0].embedding, floats.data[0].embedding, atol=1e-6)
    raw = httpx.post(embed_server.url + "/v1/embeddings",
                     json={"input": TEXTS[0], "encoding_format": "base64"}, timeout=30).json()
    vec = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(vec, np.asarray(floats.data[0].embedding, dtype=np.float32))
    assert raw["model"] == "tiny-embed" and raw["object"] == "list"


def _error(server, body: dict, path: str = "/v1/embeddings") -> dict:
    r = httpx.post(server.url + path, json=body, timeout=30)
    assert r.status_code == 400, r.text
    return r.json()["error"]


def test_bad_requests_are_400(client, embed_server):
    err = _error(embed_server, {"input": "hello", "dimensions": 32})
    assert err["param"] == "dimensions" and "64" in err["message"]
    assert client.embeddings.create(model="tiny-embed", input="hello", dimensions=64).data
    for empty in ("", [], [[]], ["a", ""]):
        assert _error(embed_server, {"input": empty})["param"] == "input"
    err = _error(embed_server, {"input": [5] * (MAX_LEN + 1)})
    assert err["code"] == "context_length_exceeded"
    assert _error(embed_server, {"input": [10 ** 6]})["param"] == "input"   # out of vocab
    assert _error(embed_server, {"input": "x", "encoding_format": "int8"})["param"] \
        == "encoding_format"
    assert _error(embed_server, {"input": "x", "model": "nope"})["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="tiny-embed", input="x", dimensions=8)
    # a whole-context input is fine
    assert len(client.embeddings.create(model="tiny-embed", input=[5] * MAX_LEN,
                                        encoding_format="float").data[0].embedding) == 64


def test_generation_refused_and_models_say_embed(embed_server):
    err = _error(embed_server, {"prompt": "hello", "max_tokens": 4}, "/v1/completions")
    assert "embeddings" in err["message"]
    err = _error(embed_server, {"messages": [{"role": "user", "content": "hi"}]},
                 "/v1/chat/completions")
    assert "embeddings" in err["message"]
    models = httpx.get(embed_server.url + "/v1/models", timeout=30).json()
    assert [m["task"] for m in models["data"]] == ["embed"]


def test_no_blocks_leak(client, embed_server):
    client.embeddings.create(model="tiny-embed", input=TEXTS * 4)
    metrics = httpx.get(embed_server.url + "/metrics", timeout=30).text
    usage = [line for line in metrics.splitlines()
             if "cache_usage_perc{" in line and not line.startswith("#")]
    assert usage and all(float(line.rsplit(" ", 1)[1]) == 0.0 for line in usage), usage


def test_generate_model_refuses_embeddings(server):
    """The session server (SmolLM2, generate)."""
    c = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
    with pytest.raises(openai.BadRequestError) as e:
        c.embeddings.create(model="smol", input="hello")
    assert "does not serve embeddings" in str(e.value)
    models = httpx.get(server.url + ROOT_PATH + "/v1/models",
                       headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30).json()
    assert {m["task"] for m in models["data"]} == {"generate"}
