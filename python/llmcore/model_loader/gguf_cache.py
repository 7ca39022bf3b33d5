"""Convert a GGUF file once into a local HF-style folder, reused by later loads.

Reading a GGUF costs seconds per pass (metadata parsing, tokenizer conversion,
dequantization) and loading needs several passes. The first load writes
config.json, the tokenizer files and the dequantized weights (safetensors) under
~/.cache/llmcore/gguf/<key>, keyed by the file's path, size and mtime; every later
load reads that folder like any HF checkpoint. The folder appears atomically, so
concurrent first loads are safe. If the cache cannot be written, callers fall back
to reading the GGUF directly.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from typing import Optional

logger = logging.getLogger(__name__)

_FORMAT_VERSION = "1"
_DONE = "llmcore-gguf-conversion.done"


def cache_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "llmcore", "gguf")


def _key(path: str) -> str:
    st = os.stat(path)
    ident = f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|{_FORMAT_VERSION}"
    return hashlib.sha256(ident.encode()).hexdigest()[:20]


def cached_gguf_dir(path: str) -> Optional[str]:
    """The converted folder of `path` if an earlier load made it, else None."""
    target = os.path.join(cache_root(), _key(path))
    return target if os.path.isfile(os.path.join(target, _DONE)) else None


def converted_gguf_dir(path: str, hf_config) -> Optional[str]:
    """The converted folder of `path` (created on first use), or None if it can't be made."""
    if cached_gguf_dir(path) is not None:
        return cached_gguf_dir(path)
    target = os.path.join(cache_root(), _key(path))
    tmp = f"{target}.tmp-{os.getpid()}"
    try:
        os.makedirs(tmp, exist_ok=True)
        _convert(path, hf_config, tmp)
        open(os.path.join(tmp, _DONE), "w").close()
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
        return target if os.path.isfile(os.path.join(target, _DONE)) else None
    except OSError as e:
        logger.warning("cannot cache the GGUF conversion in %s (%s); reading the GGUF directly",
                       target, e)
        shutil.rmtree(tmp, ignore_errors=True)
        return None


def _convert(path: str, hf_config, out_dir: str) -> None:
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from llmcore.model_loader.weight_utils import iterate_gguf_weights
    from llmcore.tokenizer.loader import read_gguf_chat_template

    logger.info("converting %s once into %s", path, out_dir)
    hf_config.save_pretrained(out_dir)
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                        trust_remote_code=False)
    if getattr(tok, "chat_template", None) is None:
        tok.chat_template = read_gguf_chat_template(path)
    tok.save_pretrained(out_dir)
    weights = {name: t.contiguous() for name, t in iterate_gguf_weights(path, hf_config)}
    save_file(weights, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
