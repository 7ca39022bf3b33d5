"""--load-format npcache: the checkpoint converted once into one .npy file per tensor, then
read from there (memory-mapped copy-on-write, so a tensor is paged in when the model
copies it). As vLLM, the cache sits next to the checkpoint (<model folder>/npcache, or
--model-loader-extra-config '{"npcache_dir": ...}'). It is rebuilt when the checkpoint
files change (their names, sizes and mtimes are recorded), built under a file lock so
concurrent servers do not race, and published by an atomic rename."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Iterator, Optional

import numpy as np
import torch

from llmcore.model_loader.weight_utils import find_weight_files, iterate_hf_weights

INDEX_FILE = "npcache_index.json"
_FORMAT = 1
# numpy has no bfloat16: those tensors are stored as their raw int16 bits.
_VIEW_AS = {torch.bfloat16: torch.int16}


def _source_fingerprint(folder: str) -> list:
    _, files = find_weight_files(folder, "auto")
    out = []
    for path in files:
        st = os.stat(path)
        out.append([os.path.basename(path), st.st_size, st.st_mtime_ns])
    return out


def _read_index(cache_dir: str) -> Optional[dict]:
    try:
        with open(os.path.join(cache_dir, INDEX_FILE)) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _build(folder: str, cache_dir: str, fingerprint: list) -> None:
    parent = os.path.dirname(os.path.abspath(cache_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".npcache-", dir=parent)
    try:
        entries = []
        for i, (name, tensor) in enumerate(iterate_hf_weights(folder, "auto")):
            t = tensor.detach().cpu().contiguous()
            stored = t.view(_VIEW_AS[t.dtype]) if t.dtype in _VIEW_AS else t
            fname = f"{i:06d}.npy"
            np.save(os.path.join(tmp, fname), stored.numpy(), allow_pickle=False)
            entries.append([name, fname, str(t.dtype).split(".")[-1]])
        with open(os.path.join(tmp, INDEX_FILE), "w") as f:
            json.dump({"format": _FORMAT, "source": fingerprint, "tensors": entries}, f)
        if os.path.isdir(cache_dir):
            shutil.rmtree(cache_dir)  # stale: we hold the lock
        os.replace(tmp, cache_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_npcache(folder: str, cache_dir: Optional[str] = None) -> str:
    """The npcache folder of the HF checkpoint in `folder`, built or rebuilt if needed."""
    from filelock import FileLock

    cache_dir = os.path.abspath(cache_dir or os.path.join(folder, "npcache"))
    fingerprint = _source_fingerprint(folder)

    def fresh() -> bool:
        index = _read_index(cache_dir)
        return bool(index) and index.get("format") == _FORMAT and index.get("source") == fingerprint

    if fresh():
        return cache_dir
    os.makedirs(os.path.dirname(cache_dir), exist_ok=True)
    try:
        lock = FileLock(cache_dir + ".lock")
        with lock:
            if not fresh():
                _build(folder, cache_dir, fingerprint)
    except PermissionError as e:
        raise ValueError(f"--load-format npcache: cannot write the cache {cache_dir}: {e}; set "
                         "--model-loader-extra-config '{\"npcache_dir\": \"<writable folder>\"}'"
                         ) from None
    return cache_dir


def iterate_npcache_weights(folder: str, cache_dir: Optional[str] = None
                            ) -> Iterator[tuple[str, torch.Tensor]]:
    cache_dir = ensure_npcache(folder, cache_dir)
    index = _read_index(cache_dir)
    for name, fname, dtype in index["tensors"]:
        arr = np.load(os.path.join(cache_dir, fname), mmap_mode="c", allow_pickle=False)
        t = torch.from_numpy(arr)
        want = getattr(torch, dtype)
        if want in _VIEW_AS:
            t = t.view(want)
        yield name, t
