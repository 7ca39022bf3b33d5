"""Lazy checkpoint tensors: a tensor-parallel rank reads only its shard of each tensor,
a pipeline stage reads nothing of another stage's layers, and a read error names the
file and tensor."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from llmcore.config import EngineArgs
from llmcore.layers.context import LayerContext
from llmcore.model_loader import get_model, load_model_config
from llmcore.model_loader.lazy_tensor import LazyTensor
from llmcore.model_loader.weight_utils import iterate_hf_weights

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "models"))
from test_tiny_models import _make_hf  # noqa: E402


def test_views_and_torch_ops_read_the_window(tmp_path):
    x = torch.arange(24.0).reshape(4, 6)
    path = str(tmp_path / "t.safetensors")
    save_file({"x": x, "b": torch.arange(3, dtype=torch.int64)}, path)
    with safe_open(path, "pt") as f:
        lazy = LazyTensor(f.get_slice("x"))
        assert lazy.shape == (4, 6) and lazy.dim() == 2 and lazy.dtype == torch.float32
        dst = torch.empty(2, 3)
        dst.copy_(lazy.narrow(0, 2, 2).narrow(1, 3, 3))        # Tensor method, lazy argument
        assert torch.equal(dst, x[2:4, 3:6])
        top, rest = lazy.split([1, 3])
        assert torch.equal(rest.materialize(), x[1:])
        assert torch.equal(torch.cat([top, rest]), x)           # torch function
        assert torch.equal(lazy.t(), x.t())                     # any other tensor method
        assert LazyTensor(f.get_slice("b")).dtype == torch.int64
        with pytest.raises(IndexError, match="outside a dimension of size 4"):
            lazy.narrow(0, 3, 2)


class _Bad:
    def get_shape(self):
        return [2, 2]

    def __getitem__(self, idx):
        raise OSError("truncated")


def test_a_read_error_names_the_tensor():
    with pytest.raises(ValueError, match="f.safetensors: tensor w: cannot be read: OSError"):
        torch.zeros(2, 2).copy_(LazyTensor(_Bad(), what="f.safetensors: tensor w"))


@pytest.fixture
def reads(monkeypatch):
    """(tensor description, window) of every read of a lazy checkpoint tensor."""
    log = []
    real = LazyTensor.materialize

    def spy(self):
        log.append((self._what.rsplit("tensor ", 1)[1], list(self._window)))
        return real(self)

    monkeypatch.setattr(LazyTensor, "materialize", spy)
    return log


def test_a_tp_rank_of_a_pp_stage_reads_only_its_shards(tmp_path, reads):
    hf, folder = _make_hf(tmp_path, "llama")   # 2 layers, 4 heads (16 dims), 2 kv heads
    mc = load_model_config(EngineArgs(model=folder), "cpu")
    ctx = LayerContext(device="cpu", dtype=mc.dtype, tp_rank=1, tp_size=2, pp_rank=1,
                       pp_size=2)
    model = get_model(mc, layer_context=ctx)
    names = {n for n, _ in reads}
    assert names and not any(n.startswith(("model.layers.0.", "model.embed_tokens"))
                             for n in names)        # stage 0's tensors: never read
    window = dict(reads)
    assert window["model.layers.1.self_attn.q_proj.weight"] == [(32, 32), (0, 64)]
    assert window["model.layers.1.self_attn.k_proj.weight"] == [(16, 16), (0, 64)]
    assert window["model.layers.1.self_attn.o_proj.weight"] == [(0, 64), (32, 32)]
    assert window["model.layers.1.mlp.down_proj.weight"] == [(0, 64), (64, 64)]
    assert window["lm_head.weight"] == [(128, 128), (0, 64)]
    assert window["model.norm.weight"] == [(0, 64)]        # replicated: all of it
    sd = hf.state_dict()
    assert torch.equal(model.lm_head.weight.detach().to_dense(), sd["lm_head.weight"][128:])


def test_the_eager_reader_still_yields_tensors(tmp_path):
    _, folder = _make_hf(tmp_path, "llama")
    pairs = list(iterate_hf_weights(folder, "safetensors"))
    assert pairs and all(isinstance(t, torch.Tensor) for _, t in pairs)
    lazy = dict(iterate_hf_weights(folder, "safetensors", lazy=True))
    assert all(isinstance(t, LazyTensor) for t in lazy.values())
