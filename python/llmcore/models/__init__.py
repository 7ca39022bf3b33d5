"""Model implementations and the architecture registry."""

from llmcore.models.registry import ModelRegistry, get_model_cls

__all__ = ["ModelRegistry", "get_model_cls"]
