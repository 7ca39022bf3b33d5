"""The model's generation_config.json (--generation-config auto|vllm|PATH, as vLLM).

Two things come out of it: the EOS token ids (its `eos_token_id`, an int or a list such
as Llama-3-Instruct's [128001, 128009]) and sampling defaults for requests that leave a
field unset. `max_new_tokens` becomes `max_tokens`; other keys are ignored.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

GENERATION_CONFIG_FILE = "generation_config.json"

# generation_config key -> SamplingParams field
_DEFAULT_KEYS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                 "min_p": "min_p", "repetition_penalty": "repetition_penalty",
                 "max_new_tokens": "max_tokens"}


def read_generation_config(setting: str, model_path: str) -> dict[str, Any]:
    """The generation config dict ({} when there is none or setting is 'vllm').

    setting: 'auto' = the model folder's file (a .gguf model has none), 'vllm' = none,
    anything else = a folder holding generation_config.json."""
    if setting in (None, "", "vllm"):
        return {}
    if setting == "auto":
        if not os.path.isdir(model_path):
            return {}
        path = os.path.join(model_path, GENERATION_CONFIG_FILE)
        if not os.path.isfile(path):
            return {}
    else:
        folder = os.path.expanduser(setting)
        path = os.path.join(folder, GENERATION_CONFIG_FILE)
        if not os.path.isdir(folder) or not os.path.isfile(path):
            raise ValueError(f"--generation-config {setting!r}: expected 'auto', 'vllm' or a folder "
                             f"holding {GENERATION_CONFIG_FILE}; {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--generation-config: cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--generation-config: {path} is not a JSON object")
    return data


def eos_token_ids(generation_config: dict, hf_config_eos: Any) -> list[int]:
    """EOS ids: the generation config's when it names any, else the model config's."""
    value = generation_config.get("eos_token_id")
    if value is None:
        value = hf_config_eos
    if value is None:
        return []
    items = [value] if isinstance(value, int) else list(value)
    out: list[int] = []
    for t in items:
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise ValueError(f"generation config eos_token_id: {t!r} is not a token id")
        if t not in out:
            out.append(t)
    return out


def sampling_defaults(generation_config: dict) -> dict[str, Any]:
    """SamplingParams field -> default value from the generation config (as vLLM, do_sample
    is not consulted)."""
    out: dict[str, Any] = {}
    for key, name in _DEFAULT_KEYS.items():
        value = generation_config.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[name] = int(value) if name in ("top_k", "max_tokens") else float(value)
    return out


def apply_sampling_defaults(values: dict, defaults: Optional[dict]) -> dict:
    """`values` (request field -> value, None = unset) with the unset ones filled from
    `defaults`. Returns a new dict."""
    out = dict(values)
    for name, value in (defaults or {}).items():
        if out.get(name) is None:
            out[name] = value
    return out
