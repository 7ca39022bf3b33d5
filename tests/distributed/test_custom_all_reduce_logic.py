"""The custom all-reduce's decisions, on the CPU: which groups may use it, which tensors it
takes (the rest go to NCCL) and argument checks. Elsewhere: the --disable-custom-all-reduce
plumbing in tests/executor/test_custom_all_reduce_flag.py; the kernel itself in
tests/kernels/test_custom_all_reduce.py; the routing through TorchDistributedGroup and the
ranks' agreement in tests/distributed/test_group.py."""

from __future__ import annotations

import pytest
import torch

from llmcore.distributed.custom_all_reduce import (DEFAULT_MAX_BYTES, CustomAllReduce,
                                                   static_unavailable_reason,
                                                   tensor_unsupported_reason)

GPU = torch.device("cuda", 0)
CPU = torch.device("cpu")


def test_which_groups_may_use_it():
    assert static_unavailable_reason(2, GPU, disabled=False) is None
    for world in (4, 6, 8):
        assert static_unavailable_reason(world, torch.device("cuda"), disabled=False) is None
    assert static_unavailable_reason(2, GPU, disabled=True) == \
        "disabled (--disable-custom-all-reduce)"
    assert static_unavailable_reason(2, CPU, disabled=False) == \
        "the device is cpu, not a CUDA GPU"
    for world in (1, 3, 5, 16):
        assert static_unavailable_reason(world, GPU, disabled=False) == \
            f"the tensor-parallel size {world} is not one of 2, 4, 6, 8"


def test_which_tensors_it_takes():
    # CPU tensors stand in for the device's (the rules look at dtype, shape, strides only)
    x = torch.zeros(4096, 64, dtype=torch.bfloat16)           # 512 KiB
    assert tensor_unsupported_reason(x, CPU, DEFAULT_MAX_BYTES) is None
    assert tensor_unsupported_reason(torch.zeros(4, dtype=torch.float32), CPU, 16) is None
    assert tensor_unsupported_reason(x.to(torch.float16), CPU, DEFAULT_MAX_BYTES) is None
    assert tensor_unsupported_reason(x.to(torch.float32), CPU, DEFAULT_MAX_BYTES) is None
    assert "dtype torch.int32" in tensor_unsupported_reason(x.to(torch.int32), CPU, 1 << 30)
    assert tensor_unsupported_reason(x.t(), CPU, DEFAULT_MAX_BYTES) == "not contiguous"
    assert tensor_unsupported_reason(x, CPU, 64 << 10) == f"{4096 * 64 * 2} bytes > {64 << 10}"
    assert tensor_unsupported_reason(torch.zeros(3, 5, dtype=torch.float16), CPU, 1 << 20) == \
        "30 bytes is not a multiple of 16"
    assert tensor_unsupported_reason(x, GPU, DEFAULT_MAX_BYTES) == \
        "tensor on cpu, the buffers on cuda:0"
    # a view at an odd address is still taken (copied to an aligned tensor): the decision
    # must not depend on addresses, which may differ between ranks
    flat = torch.zeros(4100, dtype=torch.float32)
    view = flat[1:4097]
    assert view.data_ptr() % 16 != 0
    assert tensor_unsupported_reason(view, CPU, DEFAULT_MAX_BYTES) is None


def test_buffer_object_checks_its_arguments():
    ok = dict(rank=0, world_size=2, device=GPU, signals=[1, 2], staging=[3, 4],
              max_bytes=1 << 20)
    car = CustomAllReduce(**ok)
    assert (car.rank, car.world_size, car.max_bytes, car.max_blocks) == (0, 2, 1 << 20, 36)
    assert car.should_use(torch.zeros(8, dtype=torch.float16)) is False   # a CPU tensor
    car.close()   # owns nothing: a no-op
    with pytest.raises(ValueError, match=r"world_size must be one of \(2, 4, 6, 8\), got 3"):
        CustomAllReduce(**{**ok, "world_size": 3})
    with pytest.raises(ValueError, match="need 2 signal and staging pointers, got 1 and 2"):
        CustomAllReduce(**{**ok, "signals": [1]})
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        CustomAllReduce(**{**ok, "rank": 2})
    with pytest.raises(ValueError, match="max_bytes must be a positive multiple of 16"):
        CustomAllReduce(**{**ok, "max_bytes": 1000 + 1})


def test_kernel_wrapper_refuses_cpu_tensors_before_touching_the_gpu():
    from llmcore.ops.custom_all_reduce import custom_all_reduce

    x = torch.zeros(8, dtype=torch.float16)
    with pytest.raises(ValueError, match="inp must be on a CUDA device, got cpu"):
        custom_all_reduce(x, x, [1, 2], [3, 4], 0, 1 << 20)


def test_reference_sums_in_float32_in_rank_order():
    from llmcore.ops.reference import all_reduce_sum

    a = torch.tensor([1.0, 2048.0], dtype=torch.float16)
    b = torch.tensor([1e-3, 1.0], dtype=torch.float16)
    got = all_reduce_sum([a, b, b])
    # float32 accumulation, rounded once: 2048 + 1 + 1 = 2050 (fp16 adds would stay at 2048)
    assert got.dtype == torch.float16 and got.tolist() == [pytest.approx(1.002, abs=1e-3), 2050.0]
    with pytest.raises(ValueError, match="at least one tensor"):
        all_reduce_sum([])
