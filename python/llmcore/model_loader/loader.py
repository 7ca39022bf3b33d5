"""get_model: registry lookup by architecture + weight loading."""

from __future__ import annotations

import os
import time

import torch
from torch import nn

from llmcore.model_loader.cpu_tuning import tune_cpu_allocator
from llmcore.model_loader.model_config import ModelConfig
from llmcore.model_loader.weight_utils import (initialize_dummy_weights, iterate_gguf_weights,
                                               iterate_hf_weights)


def iterate_weights(model_config: ModelConfig):
    """(hf_name, cpu tensor) pairs of the model's checkpoint."""
    if model_config.is_gguf:
        converted = model_config.weights_path
        if converted and os.path.isdir(converted):
            return iterate_hf_weights(converted, "safetensors")
        return iterate_gguf_weights(model_config.model_path, model_config.hf_config)
    return iterate_hf_weights(model_config.model_path, model_config.load_format)


def get_model(model_config: ModelConfig, device="cpu") -> nn.Module:
    """Build the model for model_config.architecture on `device` in model_config.dtype and
    load its weights (or random ones for load_format="dummy")."""
    from llmcore.models.registry import get_model_cls

    device = torch.device(device)
    if device.type == "cpu":
        tune_cpu_allocator()
    cls = get_model_cls([model_config.architecture])
    t0 = time.perf_counter()
    with torch.inference_mode(False), torch.no_grad():
        model = cls(model_config, device=device)
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
