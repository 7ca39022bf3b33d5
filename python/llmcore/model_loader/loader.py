"""get_model: registry lookup by architecture + weight loading."""

from __future__ import annotations

import os
import time
from typing import Optional

import torch
from torch import nn

from llmcore.layers.context import LayerContext
from llmcore.model_loader.cpu_tuning import tune_cpu_allocator
from llmcore.model_loader.extra_config import loader_extra
from llmcore.model_loader.model_config import ModelConfig
from llmcore.model_loader.weight_utils import (initialize_dummy_weights, iterate_gguf_weights,
                                               iterate_hf_weights)


def iterate_weights(model_config: ModelConfig):
    """(hf_name, cpu tensor) pairs of the model's checkpoint."""
    if model_config.is_gguf:
        converted = model_config.weights_path
        if converted and os.path.isdir(converted):
            return iterate_hf_weights(converted, "safetensors", lazy=True)
        # a raw GGUF file is dequantized whole, then each layer slices its shard
        return iterate_gguf_weights(model_config.model_path, model_config.hf_config)
    extra = model_config.loader_extra_config
    if model_config.load_format == "npcache":
        from llmcore.model_loader.npcache import iterate_npcache_weights
        return iterate_npcache_weights(model_config.model_path,
                                       loader_extra(extra, "npcache_dir"))
    if model_config.load_format == "tensorizer":
        return iterate_tensorizer_weights(
            loader_extra(extra, "tensorizer_uri",
                         os.path.join(model_config.model_path, "model.tensors")))
    return iterate_hf_weights(model_config.model_path, model_config.load_format, lazy=True)


def iterate_tensorizer_weights(uri: str):
    """(name, tensor) pairs of a tensorizer-serialized state dict (a file path or URI)."""
    try:
        from tensorizer import TensorDeserializer
    except ImportError:
        raise ValueError("--load-format tensorizer needs the tensorizer package: "
                         "pip install tensorizer") from None
    if "://" not in uri and not os.path.isfile(uri):
        raise ValueError(f"--load-format tensorizer: {uri} does not exist; name the serialized "
                         "file with --model-loader-extra-config '{\"tensorizer_uri\": ...}'")
    deserializer = TensorDeserializer(uri, device="cpu")
    try:
        for name, tensor in deserializer.items():
            yield name, tensor
    finally:
        deserializer.close()


def build_layer_context(model_config: ModelConfig, device=None,
                        layer_context: Optional[LayerContext] = None) -> LayerContext:
    """The root context the model is built with: `layer_context` as given (checked against
    device and the model), or a single-rank one on `device` (default cpu) in the model's
    dtype."""
    if layer_context is None:
        return LayerContext.single_rank(device if device is not None else "cpu",
                                        model_config.dtype)
    if not isinstance(layer_context, LayerContext):
        raise ValueError(f"layer_context must be a LayerContext, got {layer_context!r}")
    if device is not None and torch.device(device) != layer_context.device:
        raise ValueError(f"device {device} differs from layer_context.device "
                         f"{layer_context.device}")
    if layer_context.prefix:
        raise ValueError(f"the model's layer_context must be the root one (prefix ''), got "
                         f"prefix {layer_context.prefix!r}")
    if layer_context.dtype != model_config.dtype:
        raise ValueError(f"layer_context.dtype {layer_context.dtype} differs from the model "
                         f"dtype {model_config.dtype}")
    model_config.verify_tensor_parallel(layer_context.tp_size)
    return layer_context


def get_model(model_config: ModelConfig, device=None,
              layer_context: Optional[LayerContext] = None) -> nn.Module:
    """Build the model for model_config.architecture with `layer_context` (default: a
    single rank on `device`, default cpu, in model_config.dtype) and load its weights (or
    random ones for load_format="dummy"); each rank loads only its shards."""
    from llmcore.models.registry import get_model_cls

    ctx = build_layer_context(model_config, device, layer_context)
    if ctx.device.type == "cpu":
        tune_cpu_allocator()
    cls = get_model_cls([model_config.architecture])
    t0 = time.perf_counter()
    with torch.inference_mode(False), torch.no_grad():
        model = cls(model_config, ctx)
        if model_config.load_format == "dummy":
            initialize_dummy_weights(model)
        else:
            model.load_weights(iterate_weights(model_config))
        for module in model.modules():
            qm = getattr(module, "quant_method", None)
            if qm is not None:
                qm.process_weights_after_loading(module)
            elif hasattr(module, "process_weights_after_loading"):
                module.process_weights_after_loading()
    model.eval()
    model.load_time_s = time.perf_counter() - t0
    return model
