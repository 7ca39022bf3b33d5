"""Tensor-parallel shapes and weight loaders: every rank's layer takes exactly its slice
of the full checkpoint tensor (compared with narrow of the full tensor), and the ranks'
partial results combine (sum / concatenation, done here by hand in place of the
collectives) to the unsharded layer's result."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmcore.layers.context import LayerContext, SingleRankGroup
from llmcore.layers.linear import (ColumnParallelLinear, MergedColumnParallelLinear,
                                   QKVParallelLinear, ReplicatedLinear, RowParallelLinear)
from llmcore.layers.vocab_embedding import (LogitsProcessor, ParallelLMHead,
                                            VocabParallelEmbedding)


def _ctx(rank: int, size: int, prefix: str = "layer") -> LayerContext:
    # A one-rank group: each rank's collectives return its own partial result, which
    # the tests combine by hand.
    return LayerContext(device="cpu", dtype=torch.float32, tp_rank=rank, tp_size=size,
                        tp_group=SingleRankGroup(), prefix=prefix)


@pytest.mark.parametrize("heads,kv_heads,tp,per_rank", [
    (4, 2, 2, (2, 1, 1)),   # (heads, kv heads, kv replicas) per rank
    (9, 3, 3, (3, 1, 1)),
    (2 * 4, 2, 4, (2, 1, 2)),  # more ranks than kv heads: each kv head on 2 ranks
    (4, 4, 2, (2, 2, 1)),
])
def test_qkv_per_rank_shapes(heads, kv_heads, tp, per_rank):
    hd, hidden = 8, 32
    for r in range(tp):
        qkv = QKVParallelLinear(hidden, hd, heads, kv_heads, ctx=_ctx(r, tp), bias=True)
        assert (qkv.num_heads, qkv.num_kv_heads, qkv.num_kv_head_replicas) == per_rank
        n = (per_rank[0] + 2 * per_rank[1]) * hd
        assert tuple(qkv.weight.shape) == (n, hidden) and tuple(qkv.bias.shape) == (n,)
        assert (qkv.q_size, qkv.kv_size) == (per_rank[0] * hd, per_rank[1] * hd)


@pytest.mark.parametrize("heads,kv_heads,tp", [(4, 2, 2), (9, 3, 3), (8, 2, 4)])
def test_qkv_loader_takes_each_ranks_heads(heads, kv_heads, tp):
    hd, hidden = 4, 16
    wq = torch.randn(heads * hd, hidden)
    wk, wv = torch.randn(kv_heads * hd, hidden), torch.randn(kv_heads * hd, hidden)
    for r in range(tp):
        qkv = QKVParallelLinear(hidden, hd, heads, kv_heads, ctx=_ctx(r, tp))
        for sid, w in (("v", wv), ("q", wq), ("k", wk)):
            qkv.weight.weight_loader(qkv.weight, w, sid)
        q_n, kv_n = qkv.q_size, qkv.kv_size
        kv_rank = r * kv_heads // tp if tp > kv_heads else r
        expect = torch.cat([wq.narrow(0, r * q_n, q_n), wk.narrow(0, kv_rank * kv_n, kv_n),
                            wv.narrow(0, kv_rank * kv_n, kv_n)])
        assert torch.equal(qkv.weight.data, expect)
        fused = QKVParallelLinear(hidden, hd, heads, kv_heads, ctx=_ctx(r, tp))
        fused.weight.weight_loader(fused.weight, torch.cat([wq, wk, wv]))  # fused checkpoint
        assert torch.equal(fused.weight.data, expect)


@pytest.mark.parametrize("tp", [2, 3])
def test_column_row_merged_loaders_and_partial_sums(tp):
    hidden, inter = 12, 18
    wg, wu = torch.randn(inter, hidden), torch.randn(inter, hidden)
    wd, bd = torch.randn(hidden, inter), torch.randn(hidden)
    wc, bc = torch.randn(inter, hidden), torch.randn(inter)
    x = torch.randn(5, hidden)
    n = inter // tp
    mlp_sum = torch.zeros(5, hidden)
    col_parts = []
    for r in range(tp):
        gu = MergedColumnParallelLinear(hidden, [inter, inter], ctx=_ctx(r, tp, "gate_up"))
        gu.weight.weight_loader(gu.weight, wu, 1)
        gu.weight.weight_loader(gu.weight, wg, 0)
        assert torch.equal(gu.weight.data, torch.cat([wg.narrow(0, r * n, n),
                                                      wu.narrow(0, r * n, n)]))
        fused = MergedColumnParallelLinear(hidden, [inter, inter], ctx=_ctx(r, tp))
        fused.weight.weight_loader(fused.weight, torch.cat([wg, wu]))
        assert torch.equal(fused.weight.data, gu.weight.data)

        down = RowParallelLinear(inter, hidden, ctx=_ctx(r, tp, "down"), bias=True)
        down.weight.weight_loader(down.weight, wd)
        down.bias.weight_loader(down.bias, bd)
        assert torch.equal(down.weight.data, wd.narrow(1, r * n, n))
        assert torch.equal(down.bias.data, bd)  # not sharded; added by rank 0 only
        g, u = gu(x).chunk(2, dim=-1)
        mlp_sum += down(F.silu(g) * u)

        col = ColumnParallelLinear(hidden, inter, ctx=_ctx(r, tp, "col"), bias=True)
        col.weight.weight_loader(col.weight, wc)
        col.bias.weight_loader(col.bias, bc)
        assert torch.equal(col.weight.data, wc.narrow(0, r * n, n))
        assert torch.equal(col.bias.data, bc.narrow(0, r * n, n))
        col_parts.append(col(x))
    ref = F.linear(F.silu(F.linear(x, wg)) * F.linear(x, wu), wd, bd)
    torch.testing.assert_close(mlp_sum, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(col_parts, -1), F.linear(x, wc, bc))


def test_replicated_linear_loads_everything_on_every_rank():
    w = torch.randn(6, 4)
    for r in range(2):
        lin = ReplicatedLinear(4, 6, ctx=_ctx(r, 2))
        lin.weight.weight_loader(lin.weight, w)
        assert torch.equal(lin.weight.data, w)


@pytest.mark.parametrize("vocab,tp", [(12, 2), (10, 4), (5, 4)])
def test_vocab_parallel_embedding_and_lm_head(vocab, tp):
    dim = 6
    w = torch.randn(vocab, dim)
    ids = torch.arange(vocab).flip(0)
    h = torch.randn(3, dim)
    n = -(-vocab // tp)
    emb_sum = torch.zeros(vocab, dim)
    logit_parts = []
    for r in range(tp):
        emb = VocabParallelEmbedding(vocab, dim, ctx=_ctx(r, tp, "embed"))
        emb.weight.weight_loader(emb.weight, w)
        rows = max(0, min(n, vocab - r * n))
        assert tuple(emb.weight.shape) == (n, dim)
        assert torch.equal(emb.weight.data[:rows], w[r * n:r * n + rows])
        assert not emb.weight.data[rows:].any()  # padding rows are zero
        emb_sum += emb(ids)
        head = ParallelLMHead(vocab, dim, ctx=_ctx(r, tp, "lm_head"))
        head.weight.weight_loader(head.weight, w)
        logit_parts.append(head)
    torch.testing.assert_close(emb_sum, w[ids])
    # the LM head's all-gather is the concatenation of the ranks' vocab slices
    full = torch.cat([F.linear(h, p.weight) for p in logit_parts], -1)
    torch.testing.assert_close(full[:, :vocab], h @ w.T)
    # single rank: LogitsProcessor drops nothing
    one = ParallelLMHead(vocab, dim, ctx=_ctx(0, 1))
    one.weight.weight_loader(one.weight, w)
    torch.testing.assert_close(LogitsProcessor(vocab)(one, h), h @ w.T)


def test_divisibility_errors_name_the_numbers():
    with pytest.raises(ValueError, match=r"col: output size \(6\) is not divisible .*\(4\)"):
        ColumnParallelLinear(8, 6, ctx=_ctx(0, 4, "col"))
    with pytest.raises(ValueError, match=r"row: input size \(10\) .*\(3\)"):
        RowParallelLinear(10, 4, ctx=_ctx(0, 3, "row"))
    with pytest.raises(ValueError, match=r"gu: output size 0 \(5\) .*\(2\)"):
        MergedColumnParallelLinear(8, [5, 7], ctx=_ctx(0, 2, "gu"))
    with pytest.raises(ValueError, match=r"qkv: number of attention heads \(6\) .*\(4\)"):
        QKVParallelLinear(48, 8, 6, 2, ctx=_ctx(0, 4, "qkv"))
    with pytest.raises(ValueError, match=r"key/value heads \(3\) is not divisible .*\(2\)"):
        QKVParallelLinear(48, 8, 6, 3, ctx=_ctx(0, 2, "qkv"))
    with pytest.raises(ValueError, match=r"size \(6\) is larger .* heads \(4\) but not"):
        QKVParallelLinear(96, 8, 12, 4, ctx=_ctx(0, 6, "qkv"))


def test_loader_shape_errors():
    qkv = QKVParallelLinear(16, 4, 4, 2, ctx=_ctx(1, 2, "qkv"))
    with pytest.raises(ValueError, match=r"qkv\[k\]: checkpoint tensor of shape \(4, 16\) "
                                         r"has no shard \[4, 8\)"):
        qkv.weight.weight_loader(qkv.weight, torch.randn(4, 16), "k")
    with pytest.raises(ValueError, match="fused checkpoint tensor"):
        qkv.weight.weight_loader(qkv.weight, torch.randn(20, 16))
    with pytest.raises(ValueError, match="unknown qkv shard_id"):
        qkv.weight.weight_loader(qkv.weight, torch.randn(8, 16), "x")
    gu = MergedColumnParallelLinear(16, [8, 8], ctx=_ctx(0, 2, "gu"))
    with pytest.raises(ValueError, match="shard_id 2"):
        gu.weight.weight_loader(gu.weight, torch.randn(8, 16), 2)
