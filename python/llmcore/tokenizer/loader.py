"""Tokenizer loading: HF folders through AutoTokenizer, GGUF files through transformers'
GGUF tokenizer support. Nothing is cached globally."""

from __future__ import annotations

import os
from typing import Any, Optional


def read_gguf_chat_template(path: str) -> Optional[str]:
    """The GGUF's `tokenizer.chat_template` (None when absent). Raises GGUFFormatError
    (a ValueError naming the file) for a malformed file or a non-string template."""
    from llmcore.model_loader.gguf_check import GGUFFormatError, open_gguf

    field = open_gguf(path).fields.get("tokenizer.chat_template")
    if field is None:
        return None
    try:
        value = field.contents()
    except Exception as e:  # noqa: BLE001 - a field of the wrong type
        raise GGUFFormatError(f"{path}: tokenizer.chat_template cannot be read: {e}") from None
    if not isinstance(value, str):
        raise GGUFFormatError(f"{path}: tokenizer.chat_template is not a string")
    return value


def load_tokenizer(model_config, tokenizer_mode: Optional[str] = None) -> Any:
    """A transformers tokenizer for model_config.tokenizer (a HF folder or a .gguf file).

    tokenizer_mode: "auto" (fast when available) or "slow". The chat template comes from
    the tokenizer config or the GGUF metadata (`tokenizer.chat_template`); it is on
    `tokenizer.chat_template` (None when the model has none)."""
    from transformers import AutoTokenizer

    mode = tokenizer_mode or getattr(model_config, "tokenizer_mode", "auto") or "auto"
    if mode not in ("auto", "slow"):
        raise ValueError(f"--tokenizer-mode {mode!r} is not one of auto, slow")
    path = getattr(model_config, "tokenizer", None) or model_config.model_path
    if not os.path.exists(path):
        raise ValueError(f"tokenizer path {path!r} does not exist")
    use_fast = mode == "auto"
    trust = bool(getattr(model_config, "trust_remote_code", False))
    try:
        if os.path.isfile(path) and path.endswith(".gguf"):
            from llmcore.model_loader.gguf_check import check_gguf_file
            check_gguf_file(path)  # before transformers' reader, which trusts the counts
            tok = AutoTokenizer.from_pretrained(os.path.dirname(path),
                                                gguf_file=os.path.basename(path),
                                                use_fast=use_fast, trust_remote_code=trust)
            if getattr(tok, "chat_template", None) is None:
                tok.chat_template = read_gguf_chat_template(path)
        else:
            tok = AutoTokenizer.from_pretrained(path, use_fast=use_fast, trust_remote_code=trust)
    except Exception as e:  # noqa: BLE001 - transformers raises many types here
        if not trust and "trust_remote_code" in str(e):
            raise ValueError(f"{path} ships its own tokenizer code (auto_map); pass "
                             "--trust-remote-code to let transformers run it") from None
        if isinstance(e, ValueError) and path in str(e):
            raise
        raise ValueError(f"cannot load the tokenizer from {path}: {e}") from e
    if getattr(tok, "chat_template", None) is None:
        tok.chat_template = None
    return tok


def get_chat_template(tokenizer) -> Optional[str]:
    tmpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tmpl, dict):  # several named templates: the default one
        tmpl = tmpl.get("default") or next(iter(tmpl.values()), None)
    return tmpl
