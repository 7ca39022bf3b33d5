"""Attention backend selection: the interface module imports no backend (no import
circle), cpu gets the torch-ops backend, registered backends take precedence."""

from __future__ import annotations

import ast
import inspect

import pytest

from llmcore.layers.attention import backend, cpu_backend, cuda_backend, selector


def _llmcore_imports(module) -> set[str]:
    tree = ast.parse(inspect.getsource(module))
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
            and n.module and n.module.startswith("llmcore")}


def test_backends_import_the_interface_not_the_selector():
    assert _llmcore_imports(backend) == {"llmcore.layers.attention.metadata"}
    for impl in (cpu_backend, cuda_backend):
        assert "llmcore.layers.attention.selector" not in _llmcore_imports(impl)
    assert "import_module" not in inspect.getsource(backend)


def test_cpu_and_registered_backends(monkeypatch):
    assert selector.get_attn_backend(None) is cpu_backend.CpuAttentionBackend
    assert selector.get_attn_backend("cpu") is cpu_backend.CpuAttentionBackend
    if not cuda_backend.kernels_available():
        assert selector.get_attn_backend("cuda") is cpu_backend.CpuAttentionBackend

    class Custom(backend.AttentionBackend):
        name = "custom"

    monkeypatch.setattr(selector, "_REGISTERED", {})
    selector.register_attn_backend("cpu", Custom)
    assert selector.get_attn_backend("cpu") is Custom
    with pytest.raises(ValueError, match="not an AttentionBackend"):
        selector.register_attn_backend("cpu", object)
    with pytest.raises(ValueError, match="no attention backend for device type 'meta'"):
        selector.get_attn_backend("meta")
