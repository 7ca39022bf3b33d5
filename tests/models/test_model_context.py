"""Models built with an explicit LayerContext: the same logits as the default single-rank
build, prefixes equal to the module names, per-rank sizes (ModelConfig helpers and a
tp rank's model) and their divisibility errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from llmcore.config import EngineArgs
from llmcore.layers.context import LayerContext
from llmcore.model_loader import get_model, load_model_config
from paged_kv_helper import PagedRunner
from test_tiny_models import _BASE, _PROMPTS, _make_hf


def _logits(model) -> torch.Tensor:
    runner = PagedRunner(model, num_blocks=64, block_size=8)
    out = [runner.step([(i, p) for i, p in enumerate(_PROMPTS)])]
    for s in range(3):
        out.append(runner.step([], [(i, 11 + s + i) for i in range(len(_PROMPTS))]))
    return torch.stack(out)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_explicit_context_gives_the_same_logits(tmp_path, kind):
    _, folder = _make_hf(tmp_path, kind)
    mc = load_model_config(EngineArgs(model=folder), "cpu")
    default = get_model(mc, "cpu")
    ctx = LayerContext(device="cpu", dtype=mc.dtype)
    explicit = get_model(mc, layer_context=ctx)
    assert explicit.ctx is ctx
    assert torch.equal(_logits(default), _logits(explicit))  # bitwise
    assert explicit.kv_cache_spec() == (2, 2, 16)


def test_prefixes_are_the_module_names(tmp_path):
    cfg = {**_BASE, "architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    mc = load_model_config(EngineArgs(model=str(folder), load_format="dummy"), "cpu")
    model = get_model(mc)
    named = {name: m for name, m in model.named_modules() if hasattr(m, "prefix")}
    assert "model.layers.1.self_attn.qkv_proj" in named and "lm_head" in named
    assert "model.layers.0.self_attn.attn" in named and "model.norm" in named
    for name, module in named.items():
        assert module.prefix == name


def _config(tmp_path, **over):
    cfg = {**_BASE, "architectures": ["LlamaForCausalLM"], "model_type": "llama", **over}
    folder = tmp_path / "_".join(["cfg"] + [f"{k}{v}" for k, v in over.items()])
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    return load_model_config(EngineArgs(model=str(folder), load_format="dummy"), "cpu")


def test_model_config_per_rank_sizes(tmp_path):
    mc = _config(tmp_path)  # 4 heads, 2 kv heads, intermediate 128, vocab 256
    assert (mc.get_num_heads(2), mc.get_num_kv_heads(2)) == (2, 1)
    assert (mc.get_num_heads(4), mc.get_num_kv_heads(4)) == (1, 1)  # kv heads replicated
    assert mc.get_intermediate_size(4) == 32 and mc.get_vocab_size(3) == 86
    assert mc.kv_cache_spec(2) == (2, 1, 16) and mc.kv_cache_spec() == (2, 2, 16)
    assert mc.get_kv_bytes_per_token(tp_size=4) * 2 == mc.get_kv_bytes_per_token()
    mc9 = _config(tmp_path, num_attention_heads=9, num_key_value_heads=3, hidden_size=72,
                  intermediate_size=96)
    assert (mc9.get_num_heads(3), mc9.get_num_kv_heads(3), mc9.head_dim) == (3, 1, 8)
    mc9.verify_tensor_parallel(3)
    with pytest.raises(ValueError, match=r"attention heads \(9\) is not divisible .*\(2\)"):
        mc9.verify_tensor_parallel(2)
    mc63 = _config(tmp_path, num_attention_heads=6, num_key_value_heads=3, hidden_size=48)
    with pytest.raises(ValueError, match=r"key/value heads \(3\) is not divisible .*\(2\)"):
        mc63.get_num_kv_heads(2)
    with pytest.raises(ValueError, match=r"size \(4\) is larger .*heads \(3\) but not"):
        mc63.get_num_kv_heads(4)
    odd = _config(tmp_path, intermediate_size=130)
    with pytest.raises(ValueError, match=r"intermediate size \(130\) is not divisible .*\(4\)"):
        odd.verify_tensor_parallel(4)
    with pytest.raises(ValueError, match="positive int"):
        mc.verify_tensor_parallel(0)


@pytest.mark.parametrize("rank", [0, 1])
def test_a_tp_rank_builds_and_loads_its_shards(tmp_path, rank):
    hf, folder = _make_hf(tmp_path, "llama")
    mc = load_model_config(EngineArgs(model=folder), "cpu")
    ctx = LayerContext(device="cpu", dtype=mc.dtype, tp_rank=rank, tp_size=2)
    model = get_model(mc, layer_context=ctx)
    assert model.kv_cache_spec() == (2, 1, 16)  # this rank's KV cache
    attn = model.model.layers[1].self_attn
    assert (attn.num_heads, attn.num_kv_heads) == (2, 1)
    assert (attn.attn.num_heads, attn.attn.num_kv_heads) == (2, 1)
    sd = hf.state_dict()
    p = "model.layers.1"
    q, k, v = (sd[f"{p}.self_attn.{n}_proj.weight"] for n in "qkv")
    expect = torch.cat([q.narrow(0, rank * 32, 32), k.narrow(0, rank * 16, 16),
                        v.narrow(0, rank * 16, 16)])
    assert torch.equal(attn.qkv_proj.weight.detach().to_dense(), expect)
    o = sd[f"{p}.self_attn.o_proj.weight"]
    assert torch.equal(attn.o_proj.weight.detach().to_dense(), o.narrow(1, rank * 32, 32))
    down = sd[f"{p}.mlp.down_proj.weight"]
    assert torch.equal(model.model.layers[1].mlp.down_proj.weight.detach().to_dense(),
                       down.narrow(1, rank * 64, 64))
    emb = sd["model.embed_tokens.weight"]
    assert torch.equal(model.model.embed_tokens.weight.detach(), emb.narrow(0, rank * 128, 128))


def test_get_model_context_errors(tmp_path):
    mc = _config(tmp_path)
    ctx = LayerContext(device="cpu", dtype=mc.dtype)
    with pytest.raises(ValueError, match="differs from layer_context.device"):
        get_model(mc, "meta", layer_context=ctx)
    with pytest.raises(ValueError, match="differs from the model dtype"):
        get_model(mc, layer_context=dataclasses.replace(ctx, dtype=torch.float16))
    with pytest.raises(ValueError, match="root one"):
        get_model(mc, layer_context=ctx.child("model"))
    with pytest.raises(ValueError, match="pipeline-parallel-size 3 exceeds the model's 2 layers"):
        get_model(mc, layer_context=dataclasses.replace(ctx, pp_rank=0, pp_size=3))
    with pytest.raises(ValueError, match=r"attention heads \(4\) is not divisible .*\(3\)"):
        get_model(mc, layer_context=dataclasses.replace(ctx, tp_rank=0, tp_size=3))
    with pytest.raises(ValueError, match="must be a LayerContext"):
        get_model(mc, layer_context="cpu")


@pytest.mark.parametrize("tied", [False, True])
def test_pipeline_stages_chained_give_the_whole_models_hidden_states(tmp_path, tied):
    from llmcore.distributed.pipeline import IntermediateTensors
    from paged_kv_helper import build_metadata

    hf, folder = _make_hf(tmp_path, "llama")
    if tied:   # the last stage's LM head shares an embedding table it must hold itself
        cfg_path = f"{folder}/config.json"
        cfg = json.load(open(cfg_path))
        cfg["tie_word_embeddings"] = True
        json.dump(cfg, open(cfg_path, "w"))
    mc = load_model_config(EngineArgs(model=folder), "cpu")
    whole = get_model(mc, "cpu")
    ctx = LayerContext(device="cpu", dtype=mc.dtype)
    s0 = get_model(mc, layer_context=dataclasses.replace(ctx, pp_rank=0, pp_size=2))
    s1 = get_model(mc, layer_context=dataclasses.replace(ctx, pp_rank=1, pp_size=2))
    names0, names1 = set(dict(s0.named_parameters())), set(dict(s1.named_parameters()))
    assert all(not n.startswith("model.layers.1.") for n in names0)
    assert all(not n.startswith("model.layers.0.") for n in names1)
    assert "model.embed_tokens.weight" in names0 and "lm_head.weight" not in names0
    assert "model.norm.weight" in names1 and "model.norm.weight" not in names0
    assert ("model.embed_tokens.weight" in names1) == tied
    assert s0.kv_cache_spec() == s1.kv_cache_spec() == (1, 2, 16)   # one layer each
    ids = torch.tensor(_PROMPTS[0])
    meta, pos = build_metadata([([0] * 8, 0, len(ids))], 1, 8)
    mid = s0(ids, pos, [], meta)
    assert isinstance(mid, IntermediateTensors) and mid.residual.shape == mid.hidden_states.shape
    with pytest.raises(ValueError, match="needs the previous stage's tensors"):
        s1(ids, pos, [], meta)
    with pytest.raises(RuntimeError, match="last pipeline stage"):
        s0.compute_logits(mid.hidden_states)
    got = s1.compute_logits(s1(ids, pos, [], meta, mid))
    want = whole.compute_logits(whole(ids, pos, [], meta))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
