"""Pipeline stages: the layer split, the rank layout, and PipelineGroup's messages between
2 gloo processes (hidden states + residual forward, sampled ids back to stage 0)."""

from __future__ import annotations

import pytest
import torch

from llmcore.distributed import build_parallel_groups, get_pp_layer_range, rank_coords

from gloo_ranks import run_gloo_ranks


def test_layer_ranges_split_evenly_with_the_remainder_on_the_earliest_stages():
    assert [get_pp_layer_range(30, r, 4) for r in range(4)] == [(0, 8), (8, 16), (16, 23),
                                                               (23, 30)]
    assert [get_pp_layer_range(3, r, 2) for r in range(2)] == [(0, 2), (2, 3)]
    assert [get_pp_layer_range(4, r, 4) for r in range(4)] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert get_pp_layer_range(7, 0, 1) == (0, 7)
    for n, pp in [(30, 4), (31, 3), (5, 5), (64, 7)]:   # contiguous, covering, no empty stage
        ranges = [get_pp_layer_range(n, r, pp) for r in range(pp)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        sizes = [e - s for s, e in ranges]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    with pytest.raises(ValueError, match="pipeline-parallel-size 4 exceeds the model's 3 layers"):
        get_pp_layer_range(3, 0, 4)
    with pytest.raises(ValueError, match=r"pipeline rank must be in \[0, 2\), got 2"):
        get_pp_layer_range(4, 2, 2)


def test_rank_layout_is_pp_major():
    assert [rank_coords(r, 2, 3) for r in range(6)] == [(0, 0), (1, 0), (0, 1), (1, 1),
                                                        (0, 2), (1, 2)]
    with pytest.raises(ValueError, match="rank 6 is outside tensor x pipeline size 2 x 3"):
        rank_coords(6, 2, 3)


def _stage_messages(rank: int, world_size: int, init_method: str) -> None:
    from llmcore.distributed import IntermediateTensors

    groups = build_parallel_groups(1, 2)
    pp = groups.pp_group
    assert (groups.tp_rank, groups.pp_rank) == (0, rank) and groups.tp_group.world_size == 1
    assert (pp.is_first, pp.is_last, pp.ranks) == (rank == 0, rank == 1, [0, 1])
    g = torch.Generator().manual_seed(7)
    hidden, residual = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    tokens = torch.tensor([3, 1, 4], dtype=torch.int32)
    if rank == 0:
        pp.send_intermediate(IntermediateTensors(hidden, residual.t().contiguous().t()))
        pending = pp.irecv_tokens_from_last(3, torch.device("cpu"))
        got = pending.wait()
        assert got.dtype == torch.int64 and got.tolist() == [3, 1, 4]
    else:
        got = pp.recv_intermediate(5, 8, torch.float32, torch.device("cpu"))
        assert torch.equal(got.hidden_states, hidden) and torch.equal(got.residual, residual)
        pp.send_tokens_to_first(tokens)


def test_pipeline_messages_between_two_gloo_stages(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_gloo_ranks(_stage_messages)
