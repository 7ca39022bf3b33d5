"""TorchDistributedGroup on 2 gloo processes against torch references (with the custom
all-reduce's routing and its start-up agreement on CPU ranks), and the init helpers' errors."""

from __future__ import annotations

import pytest
import torch

from llmcore.distributed import (TorchDistributedGroup, check_visible_devices,
                                 free_tcp_init_method, init_distributed)

from gloo_ranks import run_gloo_ranks


def _part(rank: int, shape=(3, 5)) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(shape, generator=g)


def _collectives(rank: int, world_size: int, init_method: str) -> None:
    group = TorchDistributedGroup()
    assert (group.rank, group.world_size) == (rank, world_size)
    parts = [_part(r) for r in range(world_size)]
    x = _part(rank).clone()
    y = group.all_reduce(x)
    torch.testing.assert_close(y, sum(parts), rtol=1e-6, atol=1e-6)
    for dim in (0, 1, -1):
        got = group.all_gather(_part(rank), dim)
        assert torch.equal(got, torch.cat(parts, dim=dim)), dim
    # a non-contiguous input (a transposed view) gathers its values, not its storage
    got = group.all_gather(_part(rank).t(), 0)
    assert torch.equal(got, torch.cat([p.t() for p in parts], dim=0))
    _custom_all_reduce_checks(rank, world_size, parts)
    # a wrong-rank re-init names both
    try:
        init_distributed((rank + 1) % world_size, world_size, init_method, "gloo")
    except RuntimeError as e:
        assert f"rank {rank} of {world_size}" in str(e)
    else:
        raise AssertionError("re-init as another rank did not raise")


class _RecordingCustomAllReduce:
    """Stands in for CustomAllReduce: takes float32 tensors of fewer than 8 elements and sums
    them through gloo, recording what it took."""

    def __init__(self):
        self.taken = []

    def should_use(self, t: torch.Tensor) -> bool:
        return t.dtype == torch.float32 and t.numel() < 8

    def all_reduce(self, t: torch.Tensor, out=None) -> torch.Tensor:
        assert out is t   # the group reduces in place
        self.taken.append(tuple(t.shape))
        torch.distributed.all_reduce(t)
        return t


def _custom_all_reduce_checks(rank: int, world_size: int, parts) -> None:
    import llmcore.ops as ops
    from llmcore.distributed import build_parallel_groups, setup_custom_all_reduce

    # the group sends what the custom all-reduce accepts there, the rest to torch.distributed
    fake = _RecordingCustomAllReduce()
    group = TorchDistributedGroup(custom_all_reduce=fake)
    small = [_part(r, (2, 3)) for r in range(world_size)]
    y = small[rank].clone()
    assert group.all_reduce(y) is y
    torch.testing.assert_close(y, sum(small), rtol=1e-6, atol=1e-6)
    y = _part(rank).clone()
    assert group.all_reduce(y) is y
    torch.testing.assert_close(y, sum(parts), rtol=1e-6, atol=1e-6)
    assert fake.taken == [(2, 3)]
    # start-up: every rank gets the same answer, with the first rank's reason
    gpu = torch.device("cuda", 0)
    assert setup_custom_all_reduce(None, gpu, disabled=True) == (
        None, "disabled (--disable-custom-all-reduce)")
    assert setup_custom_all_reduce(None, torch.device("cpu")) == (
        None, "the device is cpu, not a CUDA GPU")
    ops.cuda_available = lambda: False   # as on a machine without the GPU kernels
    car, why = setup_custom_all_reduce(None, gpu)
    assert car is None and why == "rank 0: the llmcore GPU kernels are not available", why
    # CPU ranks build their groups without it
    groups = build_parallel_groups(world_size, 1, device=torch.device("cpu"))
    assert groups.tp_group.custom_all_reduce is None
    y = _part(rank).clone()
    torch.testing.assert_close(groups.tp_group.all_reduce(y), sum(parts), rtol=1e-6, atol=1e-6)


def test_all_reduce_and_all_gather_on_two_gloo_ranks(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_gloo_ranks(_collectives)


def test_single_rank_collectives_are_the_identity():
    init_distributed(0, 1, free_tcp_init_method(), "gloo")
    try:
        group = TorchDistributedGroup()
        x = torch.arange(6.0).reshape(2, 3)
        assert group.all_reduce(x) is x and group.all_gather(x, 1) is x
    finally:
        torch.distributed.destroy_process_group()


def test_init_errors_name_the_numbers():
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 5"):
        init_distributed(5, 2, "tcp://127.0.0.1:1", "gloo")
    with pytest.raises(ValueError, match="world_size must be a positive int, got 0"):
        init_distributed(0, 0, "tcp://127.0.0.1:1", "gloo")
    with pytest.raises(RuntimeError, match=r"rank 0 of 1: torch.distributed gloo init at "
                                           r"bogus://x failed"):
        init_distributed(0, 1, "bogus://x", "gloo")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match=f"size {n + 1} needs {n + 1} GPUs, but {n} are visible"):
        check_visible_devices(torch.device("cuda"), n + 1)
    check_visible_devices(torch.device("cpu"), 64)   # the CPU has no such limit


def test_group_needs_an_initialized_process_group():
    assert not torch.distributed.is_initialized()
    with pytest.raises(RuntimeError, match="init_distributed"):
        TorchDistributedGroup()
