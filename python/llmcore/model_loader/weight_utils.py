"""Checkpoint readers: HF folders (safetensors / .bin, sharded or not), GGUF files, and
dummy (random) initialisation. Readers yield (hf_name, tensor) pairs; the model's
`load_weights` decides where each goes."""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Iterator, Optional

import numpy as np
import torch
from torch import nn

from llmcore.model_loader.lazy_tensor import LazyTensor

# ---------------------------------------------------------------------- HF folders
_ST_INDEX = "model.safetensors.index.json"
_PT_INDEX = "pytorch_model.bin.index.json"


def _indexed_files(folder: str, index_name: str) -> Optional[list[str]]:
    """The shard files an index names, each checked to be a file inside `folder`."""
    index = os.path.join(folder, index_name)
    if not os.path.isfile(index):
        return None
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{index}: not a valid weight index ({type(e).__name__}: {e})") from None
    if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise ValueError(f"{index}: weight_map must map tensor names to file names")
    files = []
    for name in sorted(set(weight_map.values())):
        path = os.path.join(folder, name)
        # A shard outside the folder ("../x", "/etc/x") is refused, not read.
        if os.path.dirname(os.path.normpath(name)) or not os.path.isfile(path):
            raise ValueError(f"{index}: shard {name!r} is not a file in {folder}")
        files.append(path)
    return files


def find_weight_files(folder: str, load_format: str = "auto") -> tuple[str, list[str]]:
    """-> ("safetensors" | "pt", files)."""
    if load_format in ("auto", "safetensors"):
        files = _indexed_files(folder, _ST_INDEX) or sorted(
            glob.glob(os.path.join(folder, "*.safetensors")))
        if files:
            return "safetensors", files
        if load_format == "safetensors":
            raise ValueError(f"--load-format safetensors: no *.safetensors files in {folder}")
    if load_format in ("auto", "pt"):
        files = _indexed_files(folder, _PT_INDEX) or sorted(
            glob.glob(os.path.join(folder, "*.bin")) + glob.glob(os.path.join(folder, "*.pt")))
        files = [f for f in files if not os.path.basename(f).startswith("training_args")]
        if files:
            return "pt", files
    raise ValueError(f"no model weights (*.safetensors, *.bin, *.pt) found in {folder}")


def iterate_hf_weights(folder: str, load_format: str = "auto", lazy: bool = False
                       ) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of every weight file; a malformed file raises a ValueError
    naming it (the readers' own errors name neither the file nor, often, the problem).

    lazy: safetensors tensors come as LazyTensor (model_loader/lazy_tensor.py), read only
    as far as the consumer slices them (a tensor-parallel shard, or nothing for another
    pipeline stage's layers); use each before advancing the iterator. .bin files are
    memory-mapped (torch.load mmap=True), so slicing them reads only the shard's pages."""
    kind, files = find_weight_files(folder, load_format)
    if kind == "safetensors":
        from safetensors import SafetensorError, safe_open
        for path in files:
            try:
                with safe_open(path, framework="pt", device="cpu") as f:
                    for name in f.keys():
                        if lazy:
                            yield name, LazyTensor(f.get_slice(name),
                                                     what=f"{path}: tensor {name}")
                        else:
                            yield name, f.get_tensor(name)
            except (SafetensorError, OSError) as e:
                raise ValueError(f"{path}: not a valid safetensors file: {e}") from None
    else:
        import pickle
        for path in files:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError,
                    TypeError, AttributeError, KeyError, IndexError) as e:
                raise ValueError(f"{path}: not a loadable PyTorch checkpoint "
                                 f"({type(e).__name__}: {e})") from None
            if not isinstance(state, dict) or not all(
                    isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
                raise ValueError(f"{path}: not a state dict (names -> tensors)")
            yield from state.items()
            del state


# ---------------------------------------------------------------------- GGUF
_GGUF_GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_GGUF_BLOCK = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GGUF_SKIP = {"rope_freqs.weight"}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")


def gguf_to_hf_name(name: str) -> Optional[str]:
    """llama.cpp tensor name -> HF name (None: not a model weight we load)."""
    if name in _GGUF_GLOBAL:
        return _GGUF_GLOBAL[name]
    if name in _GGUF_SKIP:
        return None
    m = _BLOCK_RE.match(name)
    if m is None or m.group(2) not in _GGUF_BLOCK:
        raise ValueError(f"GGUF tensor {name!r} is not supported by the llama-family loader")
    return f"model.layers.{m.group(1)}.{_GGUF_BLOCK[m.group(2)]}.{m.group(3)}"


def unpermute_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's convert-time permutation of Q/K rows (interleaved -> neox halves)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_SUPPORTED = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0", "Q5_0", "Q5_1", "Q4_K", "Q5_K",
                   "Q6_K", "Q8_K", "Q2_K", "Q3_K"}


def iterate_gguf_weights(path: str, hf_config) -> Iterator[tuple[str, torch.Tensor]]:
    import gguf

    from llmcore.model_loader.gguf_check import GGUFFormatError, open_gguf

    reader = open_gguf(path)
    arch = None
    field = reader.fields.get("general.architecture")
    if field is not None:
        arch = field.contents()
    permute = arch in ("llama", "mistral")
    n_head = hf_config.num_attention_heads
    n_kv = getattr(hf_config, "num_key_value_heads", None) or n_head
    for t in reader.tensors:
        try:
            hf_name = gguf_to_hf_name(t.name)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        if hf_name is None:
            continue
        qtype = t.tensor_type
        if qtype.name not in _GGUF_SUPPORTED:
            raise ValueError(f"{path}: GGUF tensor {t.name} has unsupported type {qtype.name}")
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        try:
            if qtype.name == "F32":
                arr = np.array(t.data)  # copy: the memmap is read-only
            elif qtype.name == "F16":
                arr = np.asarray(t.data).astype(np.float32)
            else:
                arr = gguf.quants.dequantize(t.data, qtype)
            w = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).reshape(shape)
        except (ValueError, RuntimeError, TypeError) as e:
            raise GGUFFormatError(f"{path}: GGUF tensor {t.name} ({qtype.name}, shape {shape}) "
                                  f"cannot be read: {e}") from None
        try:
            if permute and ".self_attn.q_proj." in hf_name:
                w = unpermute_rope(w, n_head)
            elif permute and ".self_attn.k_proj." in hf_name:
                w = unpermute_rope(w, n_kv)
        except RuntimeError as e:  # a shape that does not split into the config's heads
            raise GGUFFormatError(f"{path}: GGUF tensor {t.name} (shape {shape}) does not "
                                  f"match the config's heads: {e}") from None
        yield hf_name, w


# ---------------------------------------------------------------------- dummy
@torch.no_grad()
def initialize_dummy_weights(model: nn.Module, std: float = 0.02, seed: int = 0) -> None:
    """Random weights generated in place on the parameters' device and dtype: normal(0, std)
    for matrices, 1 for norm weights, 0 for biases."""
    gens: dict = {}
    for name, p in model.named_parameters():
        if p.dim() == 1:
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.zero_()
            continue
        dev = p.device
        g = gens.get(dev)
        if g is None:
            g = gens[dev] = torch.Generator(device=dev).manual_seed(seed)
        p.normal_(0.0, std, generator=g)
