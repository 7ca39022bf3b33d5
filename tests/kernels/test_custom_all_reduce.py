"""The custom all-reduce kernel (cuda/kernels/custom_all_reduce.cu) against the torch reference
(llmcore.ops.reference.all_reduce_sum), on ONE GPU.

World sizes 2 and 4 are simulated inside one process: every "rank" has its own signal area and
staging buffer (separate allocations on the same device, their pointers listed as IPC would
give them) and its own CUDA stream, and the ranks' kernels run at the same time (grids of at
most 8 blocks, so all ranks' blocks fit on the GPU together). Also: the launch counters, a CUDA
graph replayed with fresh inputs, the registered-buffer mode, and two processes on the same GPU
going through the real IPC handle exchange (setup_custom_all_reduce)."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
import traceback

import pytest
import torch

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# 4 KB .. 8 MB, with sizes that split unevenly into slices (two-shot) and blocks
SIZES = [4096, 4096 + 16 * 7, 65536, 262144 + 48, 1 << 20, (3 << 20) + 16 * 5, 8 << 20]
STAGING = 8 << 20
SIM_MAX_BLOCKS = 8
WATCHDOG_S = 120.0


def tol(dtype):
    # conftest's tolerances, defined here: the spawned IPC ranks import this module, and a bare
    # `import conftest` there could find tests/conftest.py instead of tests/kernels/conftest.py
    return {torch.float32: (2e-3, 2e-3), torch.float16: (6e-3, 6e-3),
            torch.bfloat16: (3e-2, 3e-2)}[dtype]


def _need_concurrent_streams():
    if os.environ.get("CUDA_LAUNCH_BLOCKING") == "1" or \
            os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS") == "1":
        pytest.skip("the simulated ranks' kernels must run concurrently on separate streams")


def _synchronize_or_abort(what: str) -> None:
    """Waits for the GPU; a kernel waiting for a peer that never comes would hang the whole
    run, so after WATCHDOG_S the test process exits loudly instead."""
    done = threading.Event()

    def wait():
        torch.cuda.synchronize(0)
        done.set()

    threading.Thread(target=wait, daemon=True).start()
    if not done.wait(WATCHDOG_S):
        sys.stderr.write(f"\n{what}: the custom all-reduce did not finish in {WATCHDOG_S} s "
                         "(ranks waiting for each other); aborting the test process\n")
        sys.stderr.flush()
        os._exit(3)


class SimRanks:
    """`world` ranks on one GPU, each with its own signal area, staging buffer and stream.
    Tracks how many launches each block took part in (the expected device counters)."""

    def __init__(self, world: int):
        from llmcore.ops import custom_all_reduce as car

        self.world = world
        self.signal = [torch.zeros(car.signal_bytes(), dtype=torch.uint8, device="cuda")
                       for _ in range(world)]
        self.staging = [torch.zeros(STAGING, dtype=torch.uint8, device="cuda")
                        for _ in range(world)]
        self.signals = [t.data_ptr() for t in self.signal]
        self.stagings = [t.data_ptr() for t in self.staging]
        self.streams = [torch.cuda.Stream() for _ in range(world)]
        self.expected = [0] * car.MAX_BLOCKS

    def note_launch(self, nbytes: int, algo: str, max_blocks: int = SIM_MAX_BLOCKS) -> None:
        from llmcore.ops import custom_all_reduce as car

        for b in range(car.grid_blocks(nbytes, self.world, algo, max_blocks)):
            self.expected[b] += 1

    def run(self, inputs, outs, algo: str = "auto", max_blocks: int = SIM_MAX_BLOCKS) -> None:
        from llmcore.ops.custom_all_reduce import custom_all_reduce

        torch.cuda.synchronize()
        for r in range(self.world):
            with torch.cuda.stream(self.streams[r]):
                custom_all_reduce(inputs[r], outs[r], self.signals, self.stagings, r, STAGING,
                                  algo, max_blocks)
        self.note_launch(inputs[0].numel() * inputs[0].element_size(), algo, max_blocks)
        _synchronize_or_abort(f"{self.world} ranks, {inputs[0].numel()} x {inputs[0].dtype}")

    def counters(self, r: int) -> list:
        from llmcore.ops import custom_all_reduce as car

        off = car.counter_offset()
        return self.signal[r][off:off + 4 * car.MAX_BLOCKS].view(torch.int32).tolist()

    def check_counters(self) -> None:
        for r in range(self.world):
            assert self.counters(r) == self.expected, f"rank {r}'s launch counters"


@pytest.fixture(scope="module")
def sims():
    """One SimRanks per world size for the whole module: later cases run on buffers and
    counters the earlier ones (other sizes, other grids) left behind, as in an engine."""
    made = {}

    def get(world: int) -> SimRanks:
        if world not in made:
            made[world] = SimRanks(world)
        return made[world]

    return get


def _inputs(world: int, numel: int, dtype, seed: int):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(numel, device="cuda", generator=g).to(dtype) for _ in range(world)]


def _check(outs, inputs, dtype):
    from llmcore.ops import reference as ref

    want = ref.all_reduce_sum(inputs)
    atol, rtol = tol(dtype)
    for r, out in enumerate(outs):
        torch.testing.assert_close(out, want, atol=atol, rtol=rtol, msg=lambda m: f"rank {r}: {m}")
        assert torch.equal(out, outs[0]), f"rank {r}'s result differs from rank 0's"


@pytest.mark.parametrize("algo", ["one_shot", "two_shot", "auto"])
@pytest.mark.parametrize("nbytes", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("world", [2, 4])
def test_simulated_ranks_match_the_reference(ops, sims, world, dtype, nbytes, algo):
    _need_concurrent_streams()
    sim = sims(world)
    numel = nbytes // torch.empty(0, dtype=dtype).element_size()
    inputs = _inputs(world, numel, dtype, seed=nbytes * 7 + world)
    outs = [torch.full_like(x, float("nan")) for x in inputs]
    sim.run(inputs, outs, algo)
    _check(outs, inputs, dtype)
    sim.check_counters()


@pytest.mark.parametrize("algo", ["one_shot", "two_shot"])
@pytest.mark.parametrize("world", [2, 4])
def test_in_place_and_more_blocks(ops, sims, world, algo):
    """out is the input tensor (what TorchDistributedGroup.all_reduce does), and the largest
    grid a launch may use."""
    _need_concurrent_streams()
    sim = sims(world)
    for nbytes, max_blocks in ((4096 + 16 * 3, SIM_MAX_BLOCKS), ((2 << 20) + 16, 16)):
        numel = nbytes // 2
        inputs = _inputs(world, numel, torch.bfloat16, seed=nbytes + 11 * world)
        work = [x.clone() for x in inputs]
        sim.run(work, work, algo, max_blocks=max_blocks)
        _check(work, inputs, torch.bfloat16)
    sim.check_counters()


@pytest.mark.parametrize("world", [2, 4])
def test_registered_buffer_mode(ops, sims, world):
    """The input already lies in each rank's staging buffer: no copy, same result; the output
    may not overlap the staging buffer, and an input may not overlap it elsewhere."""
    _need_concurrent_streams()
    from llmcore.ops.custom_all_reduce import custom_all_reduce

    sim = sims(world)
    for algo, nbytes in (("one_shot", 65536), ("two_shot", (1 << 20) + 16 * 9)):
        numel = nbytes // 2
        inputs = _inputs(world, numel, torch.float16, seed=nbytes + world)
        staged = [sim.staging[r][:nbytes].view(torch.float16) for r in range(world)]
        for r in range(world):
            staged[r].copy_(inputs[r])
        outs = [torch.empty_like(x) for x in inputs]
        sim.run(staged, outs, algo)
        _check(outs, inputs, torch.float16)
    sim.check_counters()
    bad_out = sim.staging[0][4096:4096 + 1024].view(torch.float16)
    with pytest.raises(ValueError, match="overlaps this rank's staging buffer"):
        custom_all_reduce(inputs[0][:512], bad_out, sim.signals, sim.stagings, 0, STAGING)
    shifted_in = sim.staging[0][16:16 + 1024].view(torch.float16)
    with pytest.raises(ValueError, match="must start at this rank's staging buffer"):
        custom_all_reduce(shifted_in, outs[0][:512], sim.signals, sim.stagings, 0, STAGING)


@pytest.mark.parametrize("nbytes", [256 * 1024, 4 << 20])   # one-shot / two-shot under auto
@pytest.mark.parametrize("world", [2, 4])
def test_cuda_graph_replays_with_fresh_inputs(ops, world, nbytes):
    """Each rank's launch captured in a CUDA graph, replayed 5 times with new inputs: the
    epochs come from the device counters, which advance on every replay (capture runs
    nothing), and an eager launch afterwards continues from them."""
    _need_concurrent_streams()
    from llmcore.ops.custom_all_reduce import custom_all_reduce

    sim = SimRanks(world)
    dtype = torch.bfloat16
    numel = nbytes // 2
    static_in = [torch.zeros(numel, dtype=dtype, device="cuda") for _ in range(world)]
    static_out = [torch.zeros_like(x) for x in static_in]
    graphs = []
    for r in range(world):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=sim.streams[r]):
            custom_all_reduce(static_in[r], static_out[r], sim.signals, sim.stagings, r, STAGING,
                              "auto", SIM_MAX_BLOCKS)
        graphs.append(g)
    torch.cuda.synchronize()
    sim.check_counters()   # all zero: capturing launched nothing
    for it in range(5):
        inputs = _inputs(world, numel, dtype, seed=1000 * it + world)
        for r in range(world):
            static_in[r].copy_(inputs[r])
        torch.cuda.synchronize()
        for r in range(world):
            with torch.cuda.stream(sim.streams[r]):
                graphs[r].replay()
        sim.note_launch(nbytes, "auto")
        _synchronize_or_abort(f"graph replay {it}")
        _check(static_out, inputs, dtype)
        sim.check_counters()
    inputs = _inputs(world, numel, dtype, seed=99)
    outs = [torch.empty_like(x) for x in inputs]
    sim.run(inputs, outs)
    _check(outs, inputs, dtype)
    sim.check_counters()


def test_arguments_are_checked(ops, sims):
    from llmcore.ops.custom_all_reduce import custom_all_reduce

    sim = sims(2)
    x = torch.zeros(64, dtype=torch.float16, device="cuda")
    args = (sim.signals, sim.stagings, 0, STAGING)
    with pytest.raises(ValueError, match="not a multiple of 16"):
        custom_all_reduce(x[:7], torch.empty(7, dtype=torch.float16, device="cuda"), *args)
    with pytest.raises(ValueError, match="16-byte aligned"):
        custom_all_reduce(x[1:9], torch.empty(8, dtype=torch.float16, device="cuda"), *args)
    with pytest.raises(TypeError, match="float32/float16/bfloat16"):
        custom_all_reduce(x.view(torch.int16), x.view(torch.int16).clone(), *args)
    with pytest.raises(ValueError, match="exceed"):
        big = torch.zeros(STAGING // 2 + 8, dtype=torch.float16, device="cuda")
        custom_all_reduce(big, big, *args)
    with pytest.raises(ValueError, match="world size must be one of"):
        custom_all_reduce(x, x, sim.signals[:1], sim.stagings[:1], 0, STAGING)
    with pytest.raises(ValueError, match="max_blocks"):
        custom_all_reduce(x, x, *args, max_blocks=65)


# ------------------------------------------------------------ two processes, real CUDA IPC
def _part(rank: int, numel: int, dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234 + rank * 97 + numel)
    return torch.randn(numel, generator=g).to(dtype)


def _ipc_rank_main(rank: int, world: int, init_method: str, conn) -> None:
    try:
        import torch.distributed as dist

        from llmcore.distributed import (TorchDistributedGroup, init_distributed,
                                         setup_custom_all_reduce)
        from llmcore.ops import reference as ref

        torch.cuda.set_device(0)
        init_distributed(rank, world, init_method, "gloo")
        car, why = setup_custom_all_reduce(dist.group.WORLD, torch.device("cuda", 0),
                                           max_bytes=1 << 20)
        if car is None:
            conn.send(f"rank {rank}: no custom all-reduce: {why}")
            return
        group = TorchDistributedGroup(custom_all_reduce=car)
        for dtype in DTYPES:
            for nbytes in (4096, 65536 + 16, 1 << 20):
                numel = nbytes // torch.empty(0, dtype=dtype).element_size()
                parts = [_part(r, numel, dtype).cuda() for r in range(world)]
                want = ref.all_reduce_sum(parts)
                out = car.all_reduce(parts[rank])
                torch.cuda.synchronize()
                atol, rtol = tol(dtype)
                torch.testing.assert_close(out, want, atol=atol, rtol=rtol)
                y = parts[rank].clone()
                assert group.all_reduce(y) is y       # in place, through the group
                torch.cuda.synchronize()
                assert torch.equal(y, out)
        car.close()
        dist.destroy_process_group()
        conn.send("ok")
    except BaseException:  # noqa: BLE001
        conn.send(traceback.format_exc())


@pytest.mark.slow
def test_two_processes_on_one_gpu_through_ipc_handles(ops, monkeypatch):
    """Both ranks on cuda:0, handles exchanged over gloo, each process mapping the other's
    buffer with cudaIpcOpenMemHandle (the processes' kernels take turns on the GPU, so each
    barrier may wait a time slice)."""
    from llmcore.distributed import free_tcp_init_method

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ctx = mp.get_context("spawn")
    init_method = free_tcp_init_method()
    pipes, procs = [], []
    for rank in range(2):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_ipc_rank_main, args=(rank, 2, init_method, child), daemon=True)
        p.start()
        child.close()
        pipes.append(parent)
        procs.append(p)
    try:
        results = [c.recv() if c.poll(300) else "no answer in 300 s" for c in pipes]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    if any("busy or unavailable" in r for r in results):
        pytest.skip("the GPU is in exclusive-process compute mode: two processes cannot share it")
    assert results == ["ok", "ok"], results
