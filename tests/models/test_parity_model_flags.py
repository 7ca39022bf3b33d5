"""Model/flag parity with vLLM on tiny random checkpoints: --generation-config (EOS id list
and sampling defaults), hub ids from a local HF cache (revisions, --download-dir),
--trust-remote-code, --model-loader-extra-config and --load-format npcache/tensorizer."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from llmcore.config import EngineArgs
from llmcore.model_loader import get_model, load_model_config

_CFG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
            tie_word_embeddings=False)


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory, hf_gguf_tokenizer):
    """Seeded random Llama with the SmolLM2 tokenizer (no generation_config.json yet)."""
    import transformers as tf

    out = str(tmp_path_factory.mktemp("tiny_llama"))
    cfg = tf.LlamaConfig(vocab_size=len(hf_gguf_tokenizer), bos_token_id=1, eos_token_id=2,
                         **_CFG)
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(cfg).float().eval()
    model.save_pretrained(out)
    gen = os.path.join(out, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    hf_gguf_tokenizer.save_pretrained(out)
    return out


def _copy_with_gen_config(src: str, dst, gen: dict) -> str:
    dst = str(dst)
    shutil.copytree(src, dst)
    with open(os.path.join(dst, "generation_config.json"), "w") as f:
        json.dump(gen, f)
    return dst


def _llm(folder, **kw):
    from llmcore.entrypoints.llm import LLM
    return LLM(model=folder, device="cpu", max_model_len=128, num_gpu_blocks_override=64,
               cpu_kv_cache_space=0.05, max_num_seqs=4, **kw)


def test_generation_config_eos_list_stops_and_defaults(tiny_llama_dir, tmp_path):
    from llmcore.sampling_params import SamplingParams

    greedy = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    prompt = {"prompt_token_ids": [5, 6, 7, 8]}
    base = _llm(tiny_llama_dir, generation_config="vllm")
    free = base.generate(prompt, greedy, use_tqdm=False)[0].outputs[0].token_ids
    first = free[0]
    assert first != 2 and base.llm_engine.model_config.eos_token_ids == [2]
    assert base.get_default_sampling_params().temperature == 1.0
    del base

    folder = _copy_with_gen_config(tiny_llama_dir, tmp_path / "m",
                                   {"eos_token_id": [2, first], "temperature": 0.0,
                                    "top_p": 0.5, "top_k": 3, "repetition_penalty": 1.0,
                                    "max_new_tokens": 4, "do_sample": True})
    mc = load_model_config(EngineArgs(model=folder), "cpu")
    assert mc.eos_token_ids == [2, first]
    assert mc.sampling_defaults == {"temperature": 0.0, "top_p": 0.5, "top_k": 3,
                                    "repetition_penalty": 1.0, "max_tokens": 4}
    llm = _llm(folder)
    out = llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=4),
                       use_tqdm=False)[0].outputs[0]
    assert list(out.token_ids) == [first]
    assert out.finish_reason == "stop" and out.stop_reason == first
    # ignore_eos keeps going; min_tokens bans the extra EOS id as it bans the tokenizer's
    out = llm.generate(prompt, greedy, use_tqdm=False)[0].outputs[0]
    assert list(out.token_ids) == list(free)
    out = llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=4, min_tokens=2),
                       use_tqdm=False)[0].outputs[0]
    assert first not in out.token_ids[:2] and len(out.token_ids) >= 2
    # the caller's SamplingParams is not modified
    sp = SamplingParams(temperature=0.0, max_tokens=4)
    llm.generate(prompt, sp, use_tqdm=False)
    assert sp.stop_token_ids == []
    # defaults: no sampling_params -> the generation config's (greedy, 4 tokens, top_k 3 ...)
    d = llm.get_default_sampling_params()
    assert (d.temperature, d.max_tokens, d.repetition_penalty) == (0.0, 4, 1.0)
    assert list(llm.generate(prompt, use_tqdm=False)[0].outputs[0].token_ids) == [first]


def test_generation_config_path_and_errors(tiny_llama_dir, tmp_path):
    other = tmp_path / "gc"
    other.mkdir()
    (other / "generation_config.json").write_text(json.dumps({"eos_token_id": 9,
                                                              "top_p": 0.25}))
    mc = load_model_config(EngineArgs(model=tiny_llama_dir, generation_config=str(other)), "cpu")
    assert mc.eos_token_ids == [9] and mc.sampling_defaults == {"top_p": 0.25}
    mc = load_model_config(EngineArgs(model=tiny_llama_dir), "cpu")  # no file: config.json's
    assert mc.eos_token_ids == [2] and mc.sampling_defaults == {}
    with pytest.raises(ValueError, match="--generation-config .*generation_config.json"):
        load_model_config(EngineArgs(model=tiny_llama_dir,
                                     generation_config=str(tmp_path / "nope")), "cpu")
    assert "--generation-config" in _help()


def _help() -> str:
    from llmcore.entrypoints.arg_parser import make_arg_parser
    return " ".join(make_arg_parser().format_help().split())


# ---------------------------------------------------------------------- HF cache
def _hub_cache(tmp_path, src: str) -> tuple[str, str, str]:
    """models--org--tiny with main -> commit A (src) and branch dev -> commit B (src with a
    generation config naming eos 9)."""
    cache = tmp_path / "hub"
    repo = cache / "models--org--tiny"
    a, b = "a" * 40, "b" * 40
    shutil.copytree(src, repo / "snapshots" / a)
    _copy_with_gen_config(src, repo / "snapshots" / b, {"eos_token_id": [2, 9]})
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(a)
    (repo / "refs" / "dev").write_text(b)
    return str(cache), a, b


def test_hub_id_from_download_dir_with_revisions(tiny_llama_dir, tmp_path):
    cache, a, b = _hub_cache(tmp_path, tiny_llama_dir)
    mc = load_model_config(EngineArgs(model="org/tiny", download_dir=cache), "cpu")
    assert mc.model_path.endswith(os.path.join("snapshots", a)) and mc.eos_token_ids == [2]
    assert mc.served_model_name == "org/tiny"
    for rev in ("dev", b):
        mc = load_model_config(EngineArgs(model="org/tiny", download_dir=cache, revision=rev),
                               "cpu")
        assert mc.model_path.endswith(b) and mc.eos_token_ids == [2, 9]
    mc = load_model_config(EngineArgs(model=tiny_llama_dir, tokenizer="org/tiny",
                                      tokenizer_revision="dev", download_dir=cache), "cpu")
    assert mc.tokenizer.endswith(b)
    with pytest.raises(ValueError, match="huggingface-cli download org/missing"):
        load_model_config(EngineArgs(model="org/missing", download_dir=cache), "cpu")
    with pytest.raises(ValueError, match="revision 'v9'.*huggingface-cli download org/tiny "
                                         "--revision v9"):
        load_model_config(EngineArgs(model="org/tiny", download_dir=cache, revision="v9"), "cpu")
    with pytest.raises(ValueError, match="--revision applies to a hub id"):
        load_model_config(EngineArgs(model=tiny_llama_dir, revision="main"), "cpu")
    with pytest.raises(ValueError, match="--code-revision"):
        load_model_config(EngineArgs(model=tiny_llama_dir, code_revision="main"), "cpu")


def test_hub_id_from_hf_hub_cache_env(tiny_llama_dir, tmp_path, monkeypatch):
    cache, a, _ = _hub_cache(tmp_path, tiny_llama_dir)
    import huggingface_hub.constants as hc
    # huggingface_hub reads HF_HUB_CACHE at import: point its constant there as the env would
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", cache)
    mc = load_model_config(EngineArgs(model="org/tiny"), "cpu")
    assert mc.model_path.endswith(a)
    model = get_model(mc, "cpu")  # weights read from the snapshot
    assert model is not None


# ---------------------------------------------------------------------- trust_remote_code
def test_trust_remote_code(tiny_llama_dir, tmp_path):
    folder = tmp_path / "remote"
    shutil.copytree(tiny_llama_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(model_type="tiny_custom", architectures=["TinyCustomForCausalLM"],
               auto_map={"AutoConfig": "configuration_tiny.TinyCustomConfig"})
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "configuration_tiny.py").write_text(
        "from transformers import LlamaConfig\n\n\n"
        "class TinyCustomConfig(LlamaConfig):\n    model_type = 'tiny_custom'\n")
    with pytest.raises(ValueError, match="--trust-remote-code"):
        load_model_config(EngineArgs(model=str(folder)), "cpu")
    # with the flag transformers runs the folder's config code; the architecture is then
    # what llmcore refuses
    with pytest.raises(ValueError) as e:
        load_model_config(EngineArgs(model=str(folder), trust_remote_code=True), "cpu")
    assert "trust-remote-code" not in str(e.value) and "TinyCustomForCausalLM" in str(e.value)


# ---------------------------------------------------------------------- loader
def test_loader_extra_config_and_npcache(tiny_llama_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown key 'bogus'; known keys: npcache_dir"):
        EngineArgs(model_loader_extra_config='{"bogus": 1}').validate()
    with pytest.raises(ValueError, match="not valid JSON"):
        EngineArgs(model_loader_extra_config="{").validate()
    ref = get_model(load_model_config(EngineArgs(model=tiny_llama_dir), "cpu"), "cpu")
    cache = tmp_path / "npc"
    extra = json.dumps({"npcache_dir": str(cache)})
    mc = load_model_config(EngineArgs(model=tiny_llama_dir, load_format="npcache",
                                      model_loader_extra_config=extra), "cpu")
    assert mc.loader_extra_config == {"npcache_dir": str(cache)}
    for _ in range(2):  # build, then read the cache
        model = get_model(mc, "cpu")
        assert (cache / "npcache_index.json").is_file()
        for (n1, p1), (n2, p2) in zip(ref.state_dict().items(), model.state_dict().items()):
            assert n1 == n2 and torch.equal(p1, p2), n1
    stamp = os.stat(cache / "npcache_index.json").st_mtime_ns
    get_model(mc, "cpu")
    assert os.stat(cache / "npcache_index.json").st_mtime_ns == stamp  # not rebuilt


def test_npcache_rebuilds_when_checkpoint_changes(tiny_llama_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "m"
    shutil.copytree(tiny_llama_dir, folder)
    mc = load_model_config(EngineArgs(model=str(folder), load_format="npcache"), "cpu")
    get_model(mc, "cpu")
    assert (folder / "npcache" / "npcache_index.json").is_file()
    st = load_file(str(folder / "model.safetensors"))
    st["model.norm.weight"] = torch.full_like(st["model.norm.weight"], 3.0)
    save_file(st, str(folder / "model.safetensors"), metadata={"format": "pt"})
    model = get_model(mc, "cpu")
    assert torch.all(model.state_dict()["model.norm.weight"] == 3.0)


def test_tensorizer_and_bitsandbytes_refused_clearly():
    import importlib.util
    if importlib.util.find_spec("tensorizer") is None:
        with pytest.raises(ValueError, match="pip install tensorizer"):
            EngineArgs(load_format="tensorizer").validate()
    with pytest.raises(ValueError, match="bitsandbytes is not supported"):
        EngineArgs(load_format="bitsandbytes").validate()


def test_help_texts():
    h = _help()
    assert "only block manager is the C++ one" in h
    assert "vLLM picks float16" in h and "recompute for every request" in h
