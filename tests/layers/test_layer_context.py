"""LayerContext: prefixes, child contexts, validation, the single-rank group and the
quantization hook (asked per layer, None = the unquantized path)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from llmcore.layers.context import LayerContext, SingleRankGroup, divide, per_rank_kv_heads
from llmcore.layers.linear import (ColumnParallelLinear, LinearMethodBase,
                                   MergedColumnParallelLinear, RowParallelLinear,
                                   UnquantizedLinearMethod)
from llmcore.layers.vocab_embedding import ParallelLMHead

CTX = LayerContext.single_rank("cpu", torch.float32)


def test_child_extends_the_prefix_and_keeps_the_rest():
    ctx = LayerContext(device="cpu", dtype=torch.bfloat16, tp_rank=1, tp_size=2)
    assert ctx.prefix == "" and ctx.device == torch.device("cpu")
    layer = ctx.child("model").child("layers.3").child("self_attn").child("qkv_proj")
    assert layer.prefix == "model.layers.3.self_attn.qkv_proj"
    assert (layer.tp_rank, layer.tp_size, layer.dtype) == (1, 2, torch.bfloat16)
    assert ctx.prefix == ""  # the parent is unchanged
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.prefix = "x"
    for bad in ("", ".a", "a..b", "a."):
        with pytest.raises(ValueError, match="dotted name"):
            ctx.child(bad)


def test_invalid_contexts_raise():
    with pytest.raises(ValueError, match="tp_rank"):
        LayerContext(device="cpu", dtype=torch.float32, tp_rank=2, tp_size=2)
    with pytest.raises(ValueError, match="tp_size"):
        LayerContext(device="cpu", dtype=torch.float32, tp_size=0)
    with pytest.raises(ValueError, match="pp_rank"):
        LayerContext(device="cpu", dtype=torch.float32, pp_rank=1)
    with pytest.raises(ValueError, match="dtype"):
        LayerContext(device="cpu", dtype="float32")
    with pytest.raises(ValueError, match="all_reduce"):
        LayerContext(device="cpu", dtype=torch.float32, tp_group=object())
    with pytest.raises(ValueError, match="get_quant_method"):
        LayerContext(device="cpu", dtype=torch.float32, quant_config=object())
    with pytest.raises(ValueError, match="empty path"):
        LayerContext(device="cpu", dtype=torch.float32, prefix="a..b")


def test_single_rank_group_is_the_identity_and_tp_needs_a_group():
    t = torch.randn(3, 4)
    assert CTX.tp.all_reduce(t) is t and CTX.tp.all_gather(t, -1) is t
    bare = LayerContext(device="cpu", dtype=torch.float32)
    assert isinstance(bare.tp, SingleRankGroup)
    two = LayerContext(device="cpu", dtype=torch.float32, tp_rank=0, tp_size=2,
                       prefix="model.layers.0.mlp.down_proj")
    with pytest.raises(RuntimeError, match="down_proj: tp_size=2 .* no tp_group"):
        two.tp
    # shapes and loading work without a group; only the reduction needs it
    row = RowParallelLinear(8, 4, ctx=two)
    assert tuple(row.weight.shape) == (4, 4)
    with pytest.raises(RuntimeError, match="no tp_group"):
        row(torch.randn(2, 4))


def test_divide_and_kv_heads_helpers():
    assert divide(12, 3, "x") == 4
    with pytest.raises(ValueError, match=r"number of attention heads \(9\) is not divisible .*\(2\)"):
        divide(9, 2, "number of attention heads")
    assert per_rank_kv_heads(8, 2) == (4, 1)
    assert per_rank_kv_heads(2, 4) == (1, 2)
    assert per_rank_kv_heads(2, 2) == (1, 1)
    with pytest.raises(ValueError, match=r"key/value heads \(6\) is not divisible .*\(4\)"):
        per_rank_kv_heads(6, 4)
    with pytest.raises(ValueError, match=r"size \(6\) is larger .* heads \(4\) but not a multiple"):
        per_rank_kv_heads(4, 6)


class _ScaledMethod(LinearMethodBase):
    """A stand-in quantization method: stores W / 2 and multiplies by 2 (exact in fp32)."""

    def __init__(self):
        self.processed = 0

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes,
                       params_dtype, device):
        UnquantizedLinearMethod().create_weights(layer, input_size_per_partition,
                                                 output_partition_sizes, params_dtype, device)

    def apply(self, layer, x, bias):
        return F.linear(x, layer.weight * 2, bias)

    def process_weights_after_loading(self, layer):
        layer.weight.data.mul_(0.5)
        self.processed += 1


class _ByPrefix:
    def __init__(self, suffix):
        self.suffix = suffix
        self.asked: list[tuple[str, str]] = []

    def get_quant_method(self, layer, prefix):
        self.asked.append((type(layer).__name__, prefix))
        return _ScaledMethod() if prefix.endswith(self.suffix) else None


def test_quant_hook_is_asked_per_layer_by_prefix():
    qc = _ByPrefix("down_proj")
    ctx = dataclasses.replace(CTX, quant_config=qc).child("mlp")
    up = MergedColumnParallelLinear(16, [8, 8], ctx=ctx.child("gate_up_proj"))
    down = RowParallelLinear(8, 16, ctx=ctx.child("down_proj"))
    assert qc.asked == [("MergedColumnParallelLinear", "mlp.gate_up_proj"),
                        ("RowParallelLinear", "mlp.down_proj")]
    assert type(up.quant_method) is UnquantizedLinearMethod
    assert isinstance(down.quant_method, _ScaledMethod)
    w = torch.randn(16, 8)
    down.weight.weight_loader(down.weight, w)
    down.quant_method.process_weights_after_loading(down)
    assert down.quant_method.processed == 1
    x = torch.randn(3, 8)
    torch.testing.assert_close(down(x), F.linear(x, w))
    # no quant config: the unquantized path
    assert type(ColumnParallelLinear(4, 4, ctx=CTX).quant_method) is UnquantizedLinearMethod


def test_quantized_lm_head_is_refused():
    ctx = dataclasses.replace(CTX, quant_config=_ByPrefix("lm_head"))
    with pytest.raises(ValueError, match="lm_head: quantized embeddings"):
        ParallelLMHead(10, 4, ctx=ctx.child("lm_head"))
