"""Model configuration resolution and weight loading."""

from llmcore.model_loader.default_model import default_model_path, resolve_model_path
from llmcore.model_loader.loader import build_layer_context, get_model, iterate_weights
from llmcore.model_loader.model_config import ModelConfig, load_model_config

__all__ = ["ModelConfig", "build_layer_context", "default_model_path", "get_model",
           "iterate_weights", "load_model_config", "resolve_model_path"]
