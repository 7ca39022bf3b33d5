"""Architecture name (config.json `architectures`) -> model class."""

from __future__ import annotations

import importlib

# architecture -> (module under llmcore.models, class name)
_MODELS: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("llama", "LlamaForCausalLM"),
    "LLaMAForCausalLM": ("llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("llama", "MistralForCausalLM"),
    "Qwen2ForCausalLM": ("llama", "Qwen2ForCausalLM"),
}


class ModelRegistry:
    @staticmethod
    def get_supported_archs() -> list[str]:
        return list(_MODELS)

    @staticmethod
    def register_model(arch: str, module: str, cls_name: str) -> None:
        _MODELS[arch] = (module, cls_name)

    @staticmethod
    def resolve(architectures: list[str]) -> tuple[type, str]:
        for arch in architectures or []:
            if arch in _MODELS:
                mod, cls = _MODELS[arch]
                if "." not in mod:
                    mod = f"llmcore.models.{mod}"
                return getattr(importlib.import_module(mod), cls), arch
        raise ValueError(f"model architectures {architectures} are not supported; supported: "
                         f"{sorted(_MODELS)}")


def get_model_cls(architectures: list[str]) -> type:
    return ModelRegistry.resolve(architectures)[0]
