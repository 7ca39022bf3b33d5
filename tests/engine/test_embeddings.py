"""Embeddings (--task embed): LLM.embed / LLM.encode against the same pooling over HF
transformers' final hidden states (LlamaModel's last_hidden_state is after the final
norm), on a tiny random Llama and on SmolLM2; chunked prefill, prefix caching,
preemption, task mismatches, the core contract, and no leaked KV blocks."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmcore import LLM, PoolingParams, SamplingParams
from llmcore.engine.core_types import EngineCoreOutput, EngineCoreRequest

_TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
             rms_norm_eps=1e-6, tie_word_embeddings=False)
# several lengths in one batch, one longer than a block and than the chunks below
PROMPTS = [list(range(3, 8)), list(range(10, 27)), [5] * 9, list(range(40, 101)), [7]]
COS_MIN = 0.9999


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(HF LlamaForCausalLM, its folder): random weights, non-trivial norm weights."""
    import transformers as tf

    cfg = tf.LlamaConfig(**_TINY)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    out = str(tmp_path_factory.mktemp("tiny_embed"))
    model.save_pretrained(out)
    return model, out


def hf_pooled(hf_model, ids: list, pooling: str, normalize: bool) -> torch.Tensor:
    with torch.inference_mode():
        h = hf_model.model(input_ids=torch.tensor([ids])).last_hidden_state[0].float()
    v = {"LAST": h[-1], "MEAN": h.mean(0), "CLS": h[0]}[pooling]
    return F.normalize(v, dim=-1) if normalize else v


def cosines(outs, refs) -> list:
    return [F.cosine_similarity(torch.tensor(o.outputs.embedding), r, dim=0).item()
            for o, r in zip(outs, refs)]


def assert_idle(llm: LLM) -> None:
    eng = llm.llm_engine
    assert not eng.has_unfinished_requests() and not eng.core.requests
    s = eng.scheduler
    assert s.device_usage() == 0.0, "KV blocks leaked"
    assert s.num_free_device_blocks() == s.num_device_blocks()
    s.check_invariants()
    assert eng.runner.pooler.num_partial() == 0
    st = eng.get_stats()
    assert st.num_running == 0 and st.num_waiting == 0 and st.kv_cache_usage == 0.0


def tiny_llm(folder: str, **kw) -> LLM:
    return LLM(model=folder, task="embed", skip_tokenizer_init=True, cpu_kv_cache_space=0.02,
               **kw)


@pytest.fixture(scope="module")
def last_llm(tiny):
    llm = tiny_llm(tiny[1])
    yield llm
    assert_idle(llm)


@pytest.mark.parametrize("normalize", [True, False])
def test_last_pooling_matches_hf(tiny, last_llm, normalize):
    outs = last_llm.embed(PROMPTS, PoolingParams(normalize=normalize), use_tqdm=False)
    refs = [hf_pooled(tiny[0], p, "LAST", normalize) for p in PROMPTS]
    cos = cosines(outs, refs)
    assert min(cos) >= COS_MIN, cos
    for o, r, p in zip(outs, refs, PROMPTS):
        assert o.finished and o.prompt_token_ids == p and o.outputs.hidden_size == 64
        # the norms too: an un-normalised vector keeps HF's magnitude
        assert abs(torch.tensor(o.outputs.embedding).norm().item() - r.norm().item()) < 1e-3
    assert_idle(last_llm)


def test_default_is_last_normalized_and_encode(tiny, last_llm):
    enc = last_llm.encode(PROMPTS[1], use_tqdm=False)          # one prompt, not a list
    assert len(enc) == 1 and enc[0].outputs.data.dtype == torch.float32
    ref = hf_pooled(tiny[0], PROMPTS[1], "LAST", True)
    assert F.cosine_similarity(enc[0].outputs.data, ref, dim=0).item() >= COS_MIN
    assert abs(enc[0].outputs.data.norm().item() - 1.0) < 1e-5
    # dict prompts and a per-prompt params list
    outs = last_llm.embed([{"prompt_token_ids": PROMPTS[0]}, PROMPTS[2]],
                          [PoolingParams(), PoolingParams(normalize=False)], use_tqdm=False)
    assert min(cosines(outs, [hf_pooled(tiny[0], PROMPTS[0], "LAST", True),
                              hf_pooled(tiny[0], PROMPTS[2], "LAST", False)])) >= COS_MIN


@pytest.mark.parametrize("pooling,normalize", [("MEAN", True), ("MEAN", False), ("CLS", True)])
def test_mean_and_cls_pooling_match_hf(tiny, pooling, normalize):
    llm = tiny_llm(tiny[1], override_pooler_config=f'{{"pooling_type": "{pooling}", '
                                                   f'"normalize": {str(normalize).lower()}}}')
    outs = llm.embed(PROMPTS, use_tqdm=False)
    cos = cosines(outs, [hf_pooled(tiny[0], p, pooling, normalize) for p in PROMPTS])
    assert min(cos) >= COS_MIN, cos
    assert_idle(llm)


@pytest.mark.parametrize("pooling", ["LAST", "MEAN"])
def test_chunked_prefill_same_vectors(tiny, pooling):
    """Prompts of up to 61 tokens in chunks of 8: each spans several steps."""
    llm = tiny_llm(tiny[1], enable_chunked_prefill=True, max_num_batched_tokens=8,
                   override_pooler_config={"pooling_type": pooling})
    eng = llm.llm_engine
    eng.add_request("long", {"prompt_token_ids": PROMPTS[3]}, PoolingParams())
    steps = 0
    while eng.has_unfinished_requests():
        eng.step()
        steps += 1
    assert steps >= len(PROMPTS[3]) // 8           # really chunked
    outs = llm.embed(PROMPTS, use_tqdm=False)
    cos = cosines(outs, [hf_pooled(tiny[0], p, pooling, True) for p in PROMPTS])
    assert min(cos) >= COS_MIN, cos
    assert_idle(llm)


@pytest.mark.parametrize("pooling", ["LAST", "MEAN"])
def test_prefix_caching(tiny, pooling):
    """Prefix caching on, a prompt repeated in later steps: LAST may reuse the cached
    blocks (its last position is always computed); MEAN must not skip cached positions."""
    llm = tiny_llm(tiny[1], enable_chunked_prefill=True, max_num_batched_tokens=16,
                   enable_prefix_caching=True, num_gpu_blocks_override=12, block_size=16,
                   override_pooler_config={"pooling_type": pooling})
    prompts = [PROMPTS[3], PROMPTS[1], list(range(100, 150)), PROMPTS[3] + [9]]
    first = llm.embed(prompts, use_tqdm=False)
    again = llm.embed(prompts[::-1], use_tqdm=False)[::-1]
    refs = [hf_pooled(tiny[0], p, pooling, True) for p in prompts]
    cos = cosines(first, refs) + cosines(again, refs)
    assert min(cos) >= COS_MIN, cos
    hit = llm.llm_engine.get_stats().prefix_cache_hit_rate
    assert (hit > 0) if pooling == "LAST" else (hit == 0)
    assert_idle(llm)


def test_task_mismatch_errors(tiny, last_llm):
    with pytest.raises(ValueError, match="serves embeddings"):
        last_llm.generate([PROMPTS[0]], SamplingParams(max_tokens=2), use_tqdm=False)
    with pytest.raises(ValueError, match="dimensions"):
        last_llm.embed(PROMPTS[0], PoolingParams(dimensions=32), use_tqdm=False)
    assert last_llm.embed(PROMPTS[0], PoolingParams(dimensions=64), use_tqdm=False)[0].finished
    with pytest.raises(ValueError, match="maximum model length"):
        last_llm.embed([PROMPTS[0], [1] * 257], use_tqdm=False)
    with pytest.raises(ValueError, match="empty"):
        last_llm.embed([[]], use_tqdm=False)
    assert_idle(last_llm)
    # a prompt filling the whole context is fine: nothing is generated after it
    assert last_llm.embed([[3] * 256], use_tqdm=False)[0].outputs.hidden_size == 64
    gen = LLM(model=tiny[1], skip_tokenizer_init=True, cpu_kv_cache_space=0.02)
    with pytest.raises(ValueError, match="does not serve embeddings"):
        gen.embed(PROMPTS[0], use_tqdm=False)
    with pytest.raises(ValueError, match="does not serve embeddings"):
        gen.llm_engine.core.add_request(EngineCoreRequest("x", [1, 2], None, 0, 0.0,
                                                          pooling_params=PoolingParams()))
    out = gen.generate([PROMPTS[0]], SamplingParams(max_tokens=2, temperature=0), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 2
    assert not gen.llm_engine.has_unfinished_requests()
    assert gen.llm_engine.scheduler.device_usage() == 0.0


def test_engine_args_resolution(tiny):
    from llmcore.config import EngineArgs
    from llmcore.config.pooler_config import PoolerConfig

    def cfg(**kw):
        return EngineArgs(model=tiny[1], skip_tokenizer_init=True, **kw).create_engine_config()

    assert cfg().task == "generate" and cfg().pooler_config is None
    assert cfg(task="embed").pooler_config == PoolerConfig("LAST", True)
    assert cfg(runner="pooling").task == "embed"
    assert cfg(runner="pooling", override_pooler_config='{"pooling_type": "mean", '
                                                        '"normalize": false}'
               ).pooler_config == PoolerConfig("MEAN", False)
    for kw, msg in [(dict(task="generate", runner="pooling"), "disagree"),
                    (dict(override_pooler_config='{"pooling_type": "MEAN"}'), "--task embed"),
                    (dict(task="embed", override_pooler_config='{"pooling_type": "ALL"}'),
                     "pooling_type"),
                    (dict(task="embed", override_pooler_config='{"softmax": true}'),
                     "unsupported keys"),
                    (dict(task="embed", override_pooler_config='[1]'), "JSON object"),
                    (dict(task="embed", override_pooler_config='{'), "not valid JSON"),
                    (dict(task="classify"), "--task")]:
        with pytest.raises(ValueError, match=msg):
            cfg(**kw)


def test_core_contract_roundtrip():
    """The pooled vector crosses the process boundary as compact float32 bytes."""
    req = EngineCoreRequest("r", [1, 2, 3], None, 0, 1.0, pooling_params=PoolingParams(None, False))
    back = msgspec.msgpack.Decoder(EngineCoreRequest).decode(msgspec.msgpack.encode(req))
    assert back.pooling_params == PoolingParams(None, False) and back.sampling_params is None
    vec = np.arange(576, dtype="<f4") / 7
    out = EngineCoreOutput("r", pooled=vec.tobytes(), finish_reason="stop")
    wire = msgspec.msgpack.encode(out)
    assert len(wire) < 576 * 4 + 64
    got = msgspec.msgpack.Decoder(EngineCoreOutput).decode(wire)
    assert np.array_equal(np.frombuffer(got.pooled, dtype="<f4"), vec)


def test_smollm2_matches_hf():
    """The real model: LLM() default checkpoint (its converted HF folder) vs HF on that
    same folder."""
    from transformers import AutoModelForCausalLM

    from llmcore.model_loader.default_model import default_model_path
    from llmcore.model_loader.gguf_cache import cached_gguf_dir

    try:
        path = default_model_path()
    except ValueError as e:
        pytest.skip(str(e))
    llm = LLM(task="embed", max_model_len=256, cpu_kv_cache_space=0.05)
    folder = cached_gguf_dir(path)
    assert folder is not None
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = llm.get_tokenizer()
    texts = ["The capital of France is Paris.", "Embeddings map text to vectors"]
    outs = llm.embed(texts, use_tqdm=False)
    refs = [hf_pooled(hf, tok.encode(t), "LAST", True) for t in texts]
    cos = cosines(outs, refs)
    print("SmolLM2 LAST cosines:", cos)
    assert min(cos) >= COS_MIN, cos
    assert outs[0].outputs.hidden_size == 576 and outs[0].prompt == texts[0]
    assert_idle(llm)
