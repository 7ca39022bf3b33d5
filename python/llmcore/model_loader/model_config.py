"""ModelConfig: everything the engine needs to know about the model, resolved from
EngineArgs + the checkpoint's config (config.json or GGUF metadata)."""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from llmcore.layers.context import divide, per_rank_kv_heads
from llmcore.model_loader.default_model import is_hub_model, resolve_model_path
from llmcore.model_loader.generation_config import (eos_token_ids, read_generation_config,
                                                    sampling_defaults)

_DTYPES = {"half": torch.float16, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float": torch.float32, "float32": torch.float32}

# GGUF general.architecture / HF model_type -> HF architecture name
_ARCH_BY_MODEL_TYPE = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                       "qwen2": "Qwen2ForCausalLM"}

# Sanity bounds on the config's sizes: far above any real model, low enough that a
# corrupt config.json is refused before the model (or its KV cache) is allocated.
_DIM_BOUNDS = {
    "hidden_size": 1 << 17, "num_attention_heads": 1 << 12, "num_key_value_heads": 1 << 12,
    "num_hidden_layers": 1 << 12, "vocab_size": 1 << 24, "intermediate_size": 1 << 20,
    "head_dim": 1 << 12,
}
_MAX_POSITIONS = 1 << 24  # the rotary cache is sized from these
_MAX_ROPE_FACTOR = 1024

_MAX_LEN_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length",
                 "max_sequence_length", "model_max_length")


@dataclass
class ModelConfig:
    model: str                      # the --model value as given
    model_path: str                 # resolved local path (HF folder or .gguf file)
    is_gguf: bool
    hf_config: Any                  # transformers PretrainedConfig (LlamaConfig, Qwen2Config...)
    architecture: str               # e.g. "LlamaForCausalLM"
    dtype: torch.dtype
    max_model_len: int
    vocab_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    sliding_window: Optional[int]   # None when absent or disabled
    served_model_names: list = field(default_factory=list)
    tokenizer: Optional[str] = None  # resolved tokenizer path (folder or .gguf file)
    tokenizer_mode: str = "auto"
    skip_tokenizer_init: bool = False
    trust_remote_code: bool = False
    load_format: str = "auto"
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None  # None = plain RoPE
    disable_sliding_window: bool = False
    eos_token_id: Any = None
    bos_token_id: Any = None
    # EOS ids from generation_config.json (else config.json), e.g. [128001, 128009]
    eos_token_ids: list = field(default_factory=list)
    # SamplingParams defaults from generation_config.json (temperature, top_p, top_k, min_p,
    # repetition_penalty, max_tokens): the front ends fill unset request fields with them.
    sampling_defaults: dict = field(default_factory=dict)
    generation_config: dict = field(default_factory=dict)
    loader_extra_config: dict = field(default_factory=dict)
    # Where the weights are read from: model_path, or for a GGUF its converted folder
    # (model_loader/gguf_cache.py) once that exists.
    weights_path: Optional[str] = None

    @property
    def gguf_file(self) -> Optional[str]:
        return self.model_path if self.is_gguf else None

    @property
    def served_model_name(self) -> str:
        return self.served_model_names[0]

    def layer_sliding_windows(self) -> list[Optional[int]]:
        """The sliding window of each layer (None = full attention)."""
        if self.sliding_window is None:
            return [None] * self.num_layers
        types = getattr(self.hf_config, "layer_types", None)
        if types:
            return [self.sliding_window if t == "sliding_attention" else None for t in types]
        return [self.sliding_window] * self.num_layers

    # ------------------------------------------------------------ per-rank sizes
    def get_num_heads(self, tp_size: int = 1) -> int:
        """Attention heads on each tensor-parallel rank."""
        return divide(self.num_heads, tp_size, "number of attention heads")

    def get_num_kv_heads(self, tp_size: int = 1) -> int:
        """Key/value heads on each tensor-parallel rank (1, replicated, when tp_size is a
        multiple of num_kv_heads larger than it)."""
        return per_rank_kv_heads(self.num_kv_heads, tp_size)[0]

    def get_intermediate_size(self, tp_size: int = 1) -> Optional[int]:
        """MLP intermediate size on each rank (None when the config has none)."""
        total = getattr(self.hf_config, "intermediate_size", None)
        return None if total is None else divide(int(total), tp_size, "intermediate size")

    def get_vocab_size(self, tp_size: int = 1) -> int:
        """Embedding / LM-head rows on each rank: ceil(vocab / tp_size); the last rank's
        tail is zero padding (layers/vocab_embedding.py), so any vocabulary shards."""
        return -(-self.vocab_size // tp_size)

    def verify_tensor_parallel(self, tp_size: int) -> None:
        """ValueError naming the numbers when the model cannot be split over tp_size ranks."""
        if not isinstance(tp_size, int) or tp_size < 1:
            raise ValueError(f"the tensor-parallel size must be a positive int, got {tp_size!r}")
        self.get_num_heads(tp_size)
        self.get_num_kv_heads(tp_size)
        self.get_intermediate_size(tp_size)

    def kv_cache_spec(self, tp_size: int = 1) -> tuple[int, int, int]:
        """(layers, this rank's kv heads, head_dim) of one rank's KV cache."""
        return self.num_layers, self.get_num_kv_heads(tp_size), self.head_dim

    def get_kv_bytes_per_token(self, dtype: Optional[torch.dtype] = None,
                               tp_size: int = 1) -> int:
        """KV-cache bytes per token on one tensor-parallel rank."""
        elt = torch.empty((), dtype=dtype or self.dtype).element_size()
        return 2 * self.num_layers * self.get_num_kv_heads(tp_size) * self.head_dim * elt


# ---------------------------------------------------------------------- helpers
def get_rope_params(hf_config) -> tuple[float, Optional[dict]]:
    """(rope_theta, scaling dict or None) from a transformers 4.x or 5.x config."""
    rp = getattr(hf_config, "rope_parameters", None)
    if isinstance(rp, dict) and rp.get("rope_theta") is not None:
        theta = float(rp["rope_theta"])
        scaling = dict(rp) if rp.get("rope_type", rp.get("type", "default")) != "default" else None
    else:
        theta = float(getattr(hf_config, "rope_theta", None) or 10000.0)
        scaling = getattr(hf_config, "rope_scaling", None)
        scaling = dict(scaling) if scaling else None
    if scaling is not None:
        scaling.pop("rope_theta", None)
        if "rope_type" not in scaling and "type" in scaling:
            scaling["rope_type"] = scaling["type"]
        if scaling.get("rope_type") == "default":
            scaling = None
    return theta, scaling


def _set_rope_params(hf_config, theta: float, scaling: Optional[dict]) -> None:
    if hasattr(hf_config, "rope_parameters"):
        rp = {"rope_type": "default"} if scaling is None else dict(scaling)
        rp.setdefault("rope_type", rp.get("type", "default"))
        rp["rope_theta"] = theta
        hf_config.rope_parameters = rp
    else:
        hf_config.rope_theta = theta
        hf_config.rope_scaling = scaling


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v))


def check_hf_config(hf_config, source: str) -> None:
    """Refuse a config whose sizes are missing, not integers, or out of bounds, with a
    ValueError naming `source` (the config file) and the field. Run before anything is
    sized from the config."""
    def bad(key: str, why: str) -> ValueError:
        return ValueError(f"{source}: {key} {why}")

    for key, limit in _DIM_BOUNDS.items():
        v = getattr(hf_config, key, None)
        if v is None and key in ("num_key_value_heads", "head_dim", "intermediate_size"):
            continue  # optional: derived from the others
        if not _is_int(v):
            raise bad(key, f"must be an integer, got {v!r}")
        if not 1 <= v <= limit:
            raise bad(key, f"must be in [1, {limit}], got {v}")
    heads = hf_config.num_attention_heads
    kv = getattr(hf_config, "num_key_value_heads", None) or heads
    if heads % kv:
        raise bad("num_attention_heads", f"({heads}) must be a multiple of num_key_value_heads "
                  f"({kv})")
    if getattr(hf_config, "head_dim", None) is None and hf_config.hidden_size % heads:
        raise bad("hidden_size", f"({hf_config.hidden_size}) must be a multiple of "
                  f"num_attention_heads ({heads}) when head_dim is not given")
    for key in _MAX_LEN_KEYS:
        v = getattr(hf_config, key, None)
        if v is not None and not (_is_int(v) and v <= _MAX_POSITIONS):
            raise bad(key, f"must be an integer <= {_MAX_POSITIONS}, got {v!r}")
    sw = getattr(hf_config, "sliding_window", None)
    if sw is not None and not (_is_int(sw) and sw >= 0) and not (
            isinstance(sw, list) and all(w is None or (_is_int(w) and w >= 0) for w in sw)):
        raise bad("sliding_window", f"must be a non-negative integer or null, got {sw!r}")
    archs = getattr(hf_config, "architectures", None)
    if archs is not None and not (isinstance(archs, list)
                                  and all(isinstance(a, str) for a in archs)):
        raise bad("architectures", f"must be a list of class names, got {archs!r}")
    for key in ("eos_token_id", "bos_token_id"):
        v = getattr(hf_config, key, None)
        if v is not None and not (_is_int(v) and v >= 0) and not (
                isinstance(v, list) and all(_is_int(t) and t >= 0 for t in v)):
            raise bad(key, f"must be a token id or a list of token ids, got {v!r}")
    for key in ("rope_theta", "rms_norm_eps"):
        v = getattr(hf_config, key, None)
        if v is not None and not (_is_number(v) and v > 0):
            raise bad(key, f"must be a positive number, got {v!r}")
    for key in ("rope_scaling", "rope_parameters"):
        v = getattr(hf_config, key, None)
        if v is None:
            continue
        if not isinstance(v, dict):
            raise bad(key, f"must be an object, got {v!r}")
        for sub in ("factor", "rope_theta", "original_max_position_embeddings"):
            if sub in v and v[sub] is not None and not (_is_number(v[sub]) and v[sub] > 0):
                raise bad(f"{key}.{sub}", f"must be a positive number, got {v[sub]!r}")
        factor = v.get("factor")
        if factor is not None and factor > _MAX_ROPE_FACTOR:
            raise bad(f"{key}.factor", f"must be <= {_MAX_ROPE_FACTOR}, got {factor!r}")
        orig = v.get("original_max_position_embeddings")
        if orig is not None and orig > _MAX_POSITIONS:
            raise bad(f"{key}.original_max_position_embeddings",
                      f"must be <= {_MAX_POSITIONS}, got {orig!r}")


def _load_gguf_config(path: str):
    from transformers import AutoConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from llmcore.model_loader.gguf_check import check_gguf_file

    check_gguf_file(path)  # before transformers' reader, which trusts the counts in the file
    try:
        parsed = load_gguf_checkpoint(path, return_tensors=False)
    except Exception as e:  # noqa: BLE001 - transformers raises several types
        raise ValueError(f"cannot read GGUF metadata from {path}: {e}") from e
    cfg = dict(parsed["config"])
    model_type = cfg.pop("model_type", None)
    cfg.pop("_model_name_or_path", None)
    if not isinstance(model_type, str) or model_type not in _ARCH_BY_MODEL_TYPE:
        raise ValueError(f"{path}: GGUF architecture {model_type!r} is not supported; supported: "
                         f"{sorted(_ARCH_BY_MODEL_TYPE)}")
    try:
        hf_config = AutoConfig.for_model(model_type, **cfg)
    except Exception as e:  # noqa: BLE001 - a config class rejecting the GGUF's values
        raise ValueError(f"{path}: the GGUF metadata is not a valid {model_type} config: {e}"
                         ) from e
    hf_config.architectures = [_ARCH_BY_MODEL_TYPE[model_type]]
    check_hf_config(hf_config, path)
    return hf_config


def needs_remote_code_message(what: str, path: str) -> str:
    return (f"{path} ships its own {what} code (auto_map); pass --trust-remote-code to let "
            "transformers run it")


def _is_remote_code_error(e: Exception) -> bool:
    return "trust_remote_code" in str(e)


def _load_hf_config(path: str, trust_remote_code: bool, source: Optional[str] = None,
                    **hub_kwargs):
    """hub_kwargs: revision / code_revision / cache_dir for a hub id (read offline); source:
    the folder named in config errors (default: path)."""
    from transformers import AutoConfig

    if hub_kwargs:
        hub_kwargs["local_files_only"] = True
    try:
        # Code shipped with the model runs only with --trust-remote-code.
        hf_config = AutoConfig.from_pretrained(path, trust_remote_code=bool(trust_remote_code),
                                               **hub_kwargs)
    except Exception as e:  # noqa: BLE001
        if not trust_remote_code and _is_remote_code_error(e):
            raise ValueError(needs_remote_code_message("config", path)) from None
        raise ValueError(f"cannot read the model config in {path}: {e}") from e
    check_hf_config(hf_config, os.path.join(source or path, "config.json"))
    return hf_config


def _resolve_dtype(dtype: str, hf_config, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    if dtype != "auto":
        raise ValueError(f"--dtype {dtype!r} is not one of auto, {', '.join(_DTYPES)}")
    if device.type == "cpu":
        return torch.float32  # bf16/fp16 matmuls are far slower on CPU
    cfg_dtype = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
    if isinstance(cfg_dtype, str):
        cfg_dtype = getattr(torch, cfg_dtype, None)
    if cfg_dtype in (torch.float16, torch.bfloat16):
        return cfg_dtype
    return torch.bfloat16


def _derive_max_len(hf_config, scaling: Optional[dict]) -> int:
    derived = None
    for key in _MAX_LEN_KEYS:
        v = getattr(hf_config, key, None)
        if isinstance(v, int) and v > 0:
            derived = v if derived is None else min(derived, v)
    if derived is None:
        derived = 2048
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind not in ("su", "longrope", "llama3") and "factor" in scaling:
            if kind == "yarn" and scaling.get("original_max_position_embeddings"):
                derived = int(scaling["original_max_position_embeddings"])
            derived = int(derived * float(scaling["factor"]))
    return derived


def load_model_config(engine_args, device="cpu") -> ModelConfig:
    """Resolve the model and everything about it from EngineArgs (see llmcore.config)."""
    device = torch.device(device) if not isinstance(device, torch.device) else device
    cache_dir = getattr(engine_args, "download_dir", None)
    revision = getattr(engine_args, "revision", None)
    code_revision = getattr(engine_args, "code_revision", None)
    model_path = resolve_model_path(engine_args.model, "model", revision=revision,
                                    cache_dir=cache_dir)
    from_hub = is_hub_model(engine_args.model, revision)
    if code_revision is not None and not from_hub:
        raise ValueError("--code-revision applies to a hub-id --model (org/name) read from the "
                         f"HF cache; {engine_args.model!r} is a local path")
    load_format = getattr(engine_args, "load_format", "auto") or "auto"
    is_gguf = os.path.isfile(model_path) and (model_path.endswith(".gguf")
                                              or load_format == "gguf")
    if os.path.isfile(model_path) and not is_gguf:
        raise ValueError(f"--model {engine_args.model!r} is a file but not a .gguf file; pass a HF "
                         "model folder (with config.json) or a .gguf file")
    if load_format == "gguf" and not is_gguf:
        raise ValueError("--load-format gguf needs --model to be a .gguf file")
    weights_path = model_path
    if is_gguf:
        from llmcore.model_loader.gguf_cache import cached_gguf_dir, converted_gguf_dir
        cached = cached_gguf_dir(model_path)
        if cached is not None:
            hf_config = _load_hf_config(cached, trust_remote_code=False)
            weights_path = cached
        else:
            hf_config = _load_gguf_config(model_path)
            weights_path = converted_gguf_dir(model_path, hf_config) or model_path
    elif from_hub:
        # The repo id (not the snapshot folder), so that transformers reads remote code at
        # --code-revision; local_files_only keeps it offline.
        hf_config = _load_hf_config(engine_args.model, engine_args.trust_remote_code,
                                    source=model_path, revision=revision,
                                    code_revision=code_revision, cache_dir=cache_dir)
    else:
        hf_config = _load_hf_config(model_path, engine_args.trust_remote_code)
    hf_config = copy.deepcopy(hf_config)

    archs = list(getattr(hf_config, "architectures", None) or [])
    if not archs and getattr(hf_config, "model_type", None) in _ARCH_BY_MODEL_TYPE:
        archs = [_ARCH_BY_MODEL_TYPE[hf_config.model_type]]
    from llmcore.models.registry import ModelRegistry
    _, architecture = ModelRegistry.resolve(archs)

    # rope overrides
    theta, scaling = get_rope_params(hf_config)
    if engine_args.rope_theta is not None:
        theta = float(engine_args.rope_theta)
    flag_scaling = (engine_args.rope_scaling_dict() if hasattr(engine_args, "rope_scaling_dict")
                    else engine_args.rope_scaling)
    if flag_scaling is not None:
        scaling = dict(flag_scaling)
        if "rope_type" not in scaling and "type" in scaling:
            scaling["rope_type"] = scaling["type"]
        if scaling.get("rope_type") == "default":
            scaling = None
    if scaling is not None and scaling.get("rope_type") in ("longrope", "su") and \
            scaling.get("original_max_position_embeddings") is None and \
            getattr(hf_config, "original_max_position_embeddings", None):
        # Phi-3 keeps it beside max_position_embeddings, not in rope_scaling
        scaling["original_max_position_embeddings"] = int(
            hf_config.original_max_position_embeddings)
    if scaling is not None:
        from llmcore.layers.rotary import check_rope_scaling
        try:
            check_rope_scaling(scaling, from_flag=flag_scaling is not None)
        except ValueError as e:
            if flag_scaling is not None:
                raise
            # name the file, as check_hf_config does for every other field
            source = model_path if is_gguf else os.path.join(model_path, "config.json")
            raise ValueError(f"{source}: {e}") from None
    if engine_args.rope_theta is not None or flag_scaling is not None:
        _set_rope_params(hf_config, theta, scaling)

    # sliding window
    sliding_window = getattr(hf_config, "sliding_window", None)
    if getattr(hf_config, "use_sliding_window", True) is False:
        sliding_window = None
    types = getattr(hf_config, "layer_types", None)
    if sliding_window is not None and types and "sliding_attention" not in types:
        sliding_window = None
    if isinstance(sliding_window, list):  # per-layer list (rare): take the smallest
        sliding_window = min(w for w in sliding_window if w) if any(sliding_window) else None
    disable_sw = bool(getattr(engine_args, "disable_sliding_window", False))

    # max_model_len
    derived = _derive_max_len(hf_config, scaling)
    if derived > _MAX_POSITIONS and engine_args.max_model_len is None:
        raise ValueError(f"the model's maximum length {derived} (from its config and rope "
                         f"scaling) is larger than {_MAX_POSITIONS}; pass --max-model-len and "
                         "check the config")
    if disable_sw and sliding_window is not None:
        derived = min(derived, int(sliding_window))
    max_model_len = engine_args.max_model_len
    if max_model_len is None:
        max_model_len = derived
    elif max_model_len > derived:
        why = (" (capped at the sliding window because of --disable-sliding-window)"
               if disable_sw and sliding_window is not None else "")
        raise ValueError(f"--max-model-len {max_model_len} is larger than the model's maximum "
                         f"length {derived}{why}; pass a --rope-scaling that extends the "
                         "context, or a smaller --max-model-len")
    if disable_sw:
        sliding_window = None

    num_heads = int(hf_config.num_attention_heads)
    num_kv_heads = int(getattr(hf_config, "num_key_value_heads", None) or num_heads)
    hidden_size = int(hf_config.hidden_size)
    head_dim = int(getattr(hf_config, "head_dim", None) or hidden_size // num_heads)

    tok = getattr(engine_args, "tokenizer", None)
    tokenizer_path = (resolve_model_path(tok, "tokenizer",
                                         revision=getattr(engine_args, "tokenizer_revision", None),
                                         cache_dir=cache_dir) if tok else weights_path)
    if tok is None and getattr(engine_args, "tokenizer_revision", None) is not None:
        raise ValueError("--tokenizer-revision needs --tokenizer (a hub id); the model's own "
                         "tokenizer follows --revision")
    gen_cfg = read_generation_config(getattr(engine_args, "generation_config", "auto") or "auto",
                                     model_path)
    eos_ids = eos_token_ids(gen_cfg, getattr(hf_config, "eos_token_id", None))
    extra = (engine_args.model_loader_extra_config_dict()
             if hasattr(engine_args, "model_loader_extra_config_dict") else {})
    served = engine_args.served_model_name
    if isinstance(served, str):
        served = [served]
    served = list(served) if served else [engine_args.model]

    return ModelConfig(
        model=engine_args.model, model_path=model_path, is_gguf=is_gguf, hf_config=hf_config,
        weights_path=weights_path,
        architecture=architecture, dtype=_resolve_dtype(engine_args.dtype, hf_config, device),
        max_model_len=int(max_model_len), vocab_size=int(hf_config.vocab_size),
        num_layers=int(hf_config.num_hidden_layers), num_heads=num_heads,
        num_kv_heads=num_kv_heads, head_dim=head_dim, hidden_size=hidden_size,
        sliding_window=int(sliding_window) if sliding_window is not None else None,
        served_model_names=served, tokenizer=tokenizer_path,
        tokenizer_mode=getattr(engine_args, "tokenizer_mode", "auto"),
        skip_tokenizer_init=bool(getattr(engine_args, "skip_tokenizer_init", False)),
        trust_remote_code=bool(engine_args.trust_remote_code), load_format=load_format,
        rope_theta=theta, rope_scaling=scaling, disable_sliding_window=disable_sw,
        eos_token_id=getattr(hf_config, "eos_token_id", None),
        bos_token_id=getattr(hf_config, "bos_token_id", None),
        eos_token_ids=eos_ids, sampling_defaults=sampling_defaults(gen_cfg),
        generation_config=gen_cfg, loader_extra_config=extra,
    )
