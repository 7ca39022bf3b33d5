"""load_tokenizer: GGUF (default model) and HF folder tokenizers, chat templates."""

from __future__ import annotations

import pytest

from llmcore.config import EngineArgs
from llmcore.model_loader import load_model_config
from llmcore.tokenizer.loader import get_chat_template, load_tokenizer

TEXTS = ["Hello world", "  leading spaces and émojis 🙂", "def f(x):\n\treturn x**2"]


@pytest.fixture(scope="module")
def gguf_tokenizer(default_gguf_path):
    return load_tokenizer(load_model_config(EngineArgs(), "cpu"), "auto")


def test_gguf_tokenizer(gguf_tokenizer, hf_gguf_tokenizer):
    tok = gguf_tokenizer
    assert tok.eos_token_id == 2 and len(tok) == 49152
    for t in TEXTS:
        ids = tok.encode(t)
        assert ids == hf_gguf_tokenizer.encode(t)
        assert tok.decode(ids) == t
    tmpl = get_chat_template(tok)
    assert tmpl and "<|im_start|>" in tmpl
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")


def test_hf_folder_tokenizer(smollm2_hf_dir, gguf_tokenizer, default_gguf_path):
    mc = load_model_config(EngineArgs(model=smollm2_hf_dir), "cpu")
    tok = load_tokenizer(mc, "auto")
    for t in TEXTS:
        assert tok.encode(t) == gguf_tokenizer.encode(t)
    assert get_chat_template(tok) == get_chat_template(gguf_tokenizer)
    # --tokenizer pointing at another location (the GGUF file) is honoured
    mc2 = load_model_config(EngineArgs(model=smollm2_hf_dir, tokenizer=default_gguf_path), "cpu")
    assert mc2.tokenizer == default_gguf_path and not mc2.is_gguf
    assert load_tokenizer(mc2, "auto").encode(TEXTS[1]) == tok.encode(TEXTS[1])
    # slow mode loads (transformers may still hand back its only implementation)
    assert load_tokenizer(mc, "slow").encode(TEXTS[0]) == tok.encode(TEXTS[0])


def test_tokenizer_errors(tmp_path, smollm2_hf_dir):
    with pytest.raises(ValueError, match="tokenizer"):
        load_model_config(EngineArgs(model=smollm2_hf_dir, tokenizer=str(tmp_path / "nope")),
                          "cpu")
    mc = load_model_config(EngineArgs(model=smollm2_hf_dir), "cpu")
    with pytest.raises(ValueError, match="tokenizer-mode"):
        load_tokenizer(mc, "mistral")
