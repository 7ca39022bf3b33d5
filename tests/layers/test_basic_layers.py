"""Linear weight loaders (fused qkv / gate_up shards), RMSNorm (+ fused residual),
SiluAndMul, embedding / LM head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmcore.layers.activation import SiluAndMul
from llmcore.layers.context import LayerContext
from llmcore.layers.layernorm import RMSNorm
from llmcore.layers.linear import (ColumnParallelLinear, MergedColumnParallelLinear,
                                   QKVParallelLinear, RowParallelLinear)
from llmcore.layers.vocab_embedding import (LogitsProcessor, ParallelLMHead,
                                            VocabParallelEmbedding)

CTX = LayerContext.single_rank("cpu", torch.float32)


def test_qkv_and_merged_loaders():
    hidden, hd, nh, nkv = 32, 8, 4, 2
    qkv = QKVParallelLinear(hidden, hd, nh, nkv, ctx=CTX, bias=True)
    wq, wk, wv = torch.randn(nh * hd, hidden), torch.randn(nkv * hd, hidden), torch.randn(nkv * hd, hidden)
    bq, bk, bv = torch.randn(nh * hd), torch.randn(nkv * hd), torch.randn(nkv * hd)
    for sid, w, b in (("k", wk, bk), ("q", wq, bq), ("v", wv, bv)):  # any order
        qkv.weight.weight_loader(qkv.weight, w, sid)
        qkv.bias.weight_loader(qkv.bias, b, sid)
    x = torch.randn(5, hidden)
    ref = torch.cat([F.linear(x, wq, bq), F.linear(x, wk, bk), F.linear(x, wv, bv)], -1)
    torch.testing.assert_close(qkv(x), ref)
    assert (qkv.q_size, qkv.kv_size) == (32, 16)
    with pytest.raises(ValueError):
        qkv.weight.weight_loader(qkv.weight, torch.randn(3, hidden), "q")

    gu = MergedColumnParallelLinear(hidden, [24, 24], ctx=CTX)
    wg, wu = torch.randn(24, hidden), torch.randn(24, hidden)
    gu.weight.weight_loader(gu.weight, wu, 1)
    gu.weight.weight_loader(gu.weight, wg, 0)
    torch.testing.assert_close(gu(x), torch.cat([F.linear(x, wg), F.linear(x, wu)], -1))
    act = SiluAndMul()(gu(x))
    torch.testing.assert_close(act, F.silu(F.linear(x, wg)) * F.linear(x, wu))

    col = ColumnParallelLinear(hidden, 12, ctx=CTX)
    row = RowParallelLinear(12, hidden, ctx=CTX, bias=True)
    w1, w2, b2 = torch.randn(12, hidden), torch.randn(hidden, 12), torch.randn(hidden)
    col.weight.weight_loader(col.weight, w1)
    row.weight.weight_loader(row.weight, w2)
    row.bias.weight_loader(row.bias, b2)
    torch.testing.assert_close(row(col(x)), F.linear(F.linear(x, w1), w2, b2))


def test_rmsnorm_matches_hf_and_fused_residual():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    norm = RMSNorm(64, eps=1e-5, ctx=CTX)
    norm.weight.data.normal_()
    hf = LlamaRMSNorm(64, eps=1e-5)
    hf.weight.data.copy_(norm.weight.data)
    x, r = torch.randn(7, 64), torch.randn(7, 64)
    torch.testing.assert_close(norm(x.clone()), hf(x))
    out, new_res = norm(x.clone(), r)
    torch.testing.assert_close(new_res, x + r)
    torch.testing.assert_close(out, hf(x + r))
    # bf16 input: computed in fp32, returned in bf16
    y = norm.to(torch.bfloat16)(x.bfloat16())
    assert y.dtype == torch.bfloat16


def test_embedding_and_tied_lm_head():
    emb = VocabParallelEmbedding(50, 16, ctx=CTX)
    w = torch.randn(50, 16)
    emb.weight.weight_loader(emb.weight, w)
    ids = torch.tensor([0, 49, 7])
    torch.testing.assert_close(emb(ids), w[ids])
    head = ParallelLMHead(50, 16, ctx=CTX).tie_weights(emb)
    assert head.weight is emb.weight
    h = torch.randn(2, 16)
    logits = LogitsProcessor(50)(head, h)
    assert logits.dtype == torch.float32 and logits.shape == (2, 50)
    torch.testing.assert_close(logits, h @ w.T)


@pytest.mark.parametrize("bias", [False, True])
def test_cpu_packed_linear_matches_dense(bias):
    """After loading, fp32 CPU linear weights are repacked for oneDNN (layers/cpu_gemm.py);
    the layer must compute what F.linear computes with the dense weight, for any batch."""
    from llmcore.layers import cpu_gemm

    torch.manual_seed(0)
    layer = RowParallelLinear(48, 40, ctx=CTX, bias=bias)
    w = torch.randn(40, 48)
    layer.weight.weight_loader(layer.weight, w)
    if bias:
        layer.bias.weight_loader(layer.bias, torch.randn(40))
    b = None if layer.bias is None else layer.bias.detach().clone()
    layer.quant_method.process_weights_after_loading(layer)
    if not cpu_gemm.can_pack(w):
        pytest.skip("torch has no oneDNN linear ops here")
    assert layer.weight.is_mkldnn and tuple(layer.weight.shape) == (40, 48)
    for rows in (0, 1, 7, 64):
        x = torch.randn(rows, 48)
        torch.testing.assert_close(layer(x), F.linear(x, w, b), atol=1e-5, rtol=1e-5)
    # a strided input (a column slice, as the model's q/k/v views are)
    x = torch.randn(5, 96)[:, 48:]
    torch.testing.assert_close(layer(x), F.linear(x, w, b), atol=1e-5, rtol=1e-5)


def test_packed_lm_head_keeps_the_tied_embedding():
    emb = VocabParallelEmbedding(50, 16, ctx=CTX)
    w = torch.randn(50, 16)
    emb.weight.weight_loader(emb.weight, w)
    head = ParallelLMHead(50, 16, ctx=CTX).tie_weights(emb)
    head.process_weights_after_loading()
    ids = torch.tensor([3, 49])
    torch.testing.assert_close(emb(ids), w[ids])  # the embedding table is untouched
    h = torch.randn(3, 16)
    torch.testing.assert_close(LogitsProcessor(50)(head, h), h @ w.T, atol=1e-5, rtol=1e-5)


def test_fp16_weights_stay_dense():
    layer = RowParallelLinear(16, 8, ctx=LayerContext.single_rank("cpu", torch.float16))
    layer.quant_method.process_weights_after_loading(layer)
    assert not layer.weight.is_mkldnn


def test_bf16_packed_only_where_onednn_has_bf16():
    from llmcore.layers import cpu_gemm

    torch.manual_seed(0)
    layer = RowParallelLinear(64, 32, ctx=LayerContext.single_rank("cpu", torch.bfloat16))
    w = torch.randn(32, 64, dtype=torch.bfloat16)
    layer.weight.weight_loader(layer.weight, w)
    layer.quant_method.process_weights_after_loading(layer)
    assert layer.weight.is_mkldnn == cpu_gemm._bf16_supported()
    x = torch.randn(8, 64, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), x.float() @ w.float().T, atol=5e-2, rtol=2e-2)


def test_packed_untied_lm_head_replaces_its_weight():
    from llmcore.layers import cpu_gemm

    head = ParallelLMHead(50, 16, ctx=CTX)
    w = torch.randn(50, 16)
    head.weight.weight_loader(head.weight, w)
    head.process_weights_after_loading()
    if not cpu_gemm.can_pack(w):
        pytest.skip("torch has no oneDNN linear ops here")
    assert head.weight.is_mkldnn and head.packed_weight is head.weight
    h = torch.randn(4, 16)
    torch.testing.assert_close(LogitsProcessor(50)(head, h), h @ w.T, atol=1e-5, rtol=1e-5)
