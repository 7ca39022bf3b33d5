"""Tests of the llmcore._core pybind11 bindings (SchedulerConfig / Scheduler / SchedulerOutput)."""

import gc

import numpy as np
import pytest

core = pytest.importorskip("llmcore._core")
from llmcore._core import BlockAllocator, Scheduler, SchedulerConfig, SchedulerOutput  # noqa: E402


def make_cfg(**kw):
    cfg = SchedulerConfig()
    cfg.num_device_blocks = kw.pop("num_device_blocks", 64)
    cfg.max_model_len = kw.pop("max_model_len", 256)
    cfg.max_num_batched_tokens = kw.pop("max_num_batched_tokens", 256)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_config_defaults_and_attributes():
    cfg = SchedulerConfig()
    assert cfg.block_size == 16
    assert cfg.num_device_blocks == 0
    assert cfg.num_cpu_blocks == 0
    assert cfg.max_num_seqs == 256
    assert cfg.max_num_batched_tokens == 2048
    assert cfg.max_model_len == 2048
    assert cfg.enable_chunked_prefill is False
    assert cfg.enable_prefix_caching is False
    assert cfg.preemption_mode == "recompute"
    assert cfg.watermark == pytest.approx(0.01)
    cfg.preemption_mode = "swap"
    assert cfg.preemption_mode == "swap"
    with pytest.raises(ValueError):
        cfg.preemption_mode = "bogus"
    assert cfg.preemption_mode == "swap"
    cfg.block_size = 32
    assert cfg.block_size == 32
    assert "SchedulerConfig(" in repr(cfg)


@pytest.mark.parametrize(
    "kw",
    [
        dict(block_size=12),
        dict(num_device_blocks=0),
        dict(max_num_batched_tokens=100, max_model_len=256),
        dict(max_num_seqs=0),
        dict(watermark=-0.5),
    ],
)
def test_bad_config_raises_value_error(kw):
    with pytest.raises(ValueError):
        Scheduler(make_cfg(**kw))


def test_chunked_allows_small_token_budget():
    Scheduler(make_cfg(max_num_batched_tokens=64, enable_chunked_prefill=True))


def test_add_request_errors():
    s = Scheduler(make_cfg(num_device_blocks=4))
    s.add_request(1, 1, [1, 2, 3])
    with pytest.raises(ValueError):
        s.add_request(1, 2, [1])  # duplicate request id
    with pytest.raises(ValueError):
        s.add_request(2, 1, [1])  # duplicate seq id
    with pytest.raises(ValueError):
        s.add_request(3, 3, [])
    with pytest.raises(ValueError):
        s.add_request(4, 4, list(range(257)))  # > max_model_len
    with pytest.raises(ValueError):
        s.add_request(5, 5, list(range(65)))  # > 4 blocks of 16
    with pytest.raises(ValueError):
        s.fork(1, 9)  # parent not running
    with pytest.raises(ValueError):
        s.fork(77, 9)  # unknown parent
    with pytest.raises(ValueError):
        s.update([77], [1])
    with pytest.raises(ValueError):
        s.update([1, 1], [1])
    with pytest.raises(ValueError):
        s.finish_seq(77)
    with pytest.raises(ValueError):
        s.block_table(77)
    assert s.abort_request(12345) == []
    s.check_invariants()


def test_prompt_types():
    s = Scheduler(make_cfg())
    s.add_request(0, 0, [1, 2, 3])
    s.add_request(1, 1, np.array([4, 5], dtype=np.int32))
    s.add_request(2, 2, np.array([6, 7], dtype=np.int64))
    s.add_request(3, 3, prompt_token_ids=(8,), arrival_time=1.5, priority=2,
                  extra_hash_key=9, allow_prefix_cache=False)
    assert s.token_ids(2) == [6, 7]
    assert s.num_waiting() == 4


def test_schedule_output_contents_and_dtypes():
    s = Scheduler(make_cfg(block_size=8))
    s.add_request(10, 1, list(range(10)))
    s.add_request(11, 2, list(range(50, 53)))
    out = s.schedule()
    assert isinstance(out, SchedulerOutput)
    assert out.num_seqs == 2 and out.num_prefill_seqs == 2 and out.num_batched_tokens == 13
    expect = {
        "seq_ids": (np.int64, (2,)), "request_ids": (np.int64, (2,)),
        "num_tokens": (np.int32, (2,)), "context_lens": (np.int32, (2,)),
        "seq_lens": (np.int32, (2,)), "do_sample": (np.bool_, (2,)),
        "query_start_loc": (np.int32, (3,)), "input_ids": (np.int32, (13,)),
        "positions": (np.int32, (13,)), "slot_mapping": (np.int64, (13,)),
        "block_tables": (np.int32, (2, 2)), "blocks_to_swap_in": (np.int64, (0, 2)),
        "blocks_to_swap_out": (np.int64, (0, 2)), "blocks_to_copy": (np.int64, (0, 2)),
        "preempted_request_ids": (np.int64, (0,)),
    }
    for name, (dtype, shape) in expect.items():
        arr = getattr(out, name)
        assert isinstance(arr, np.ndarray), name
        assert arr.dtype == dtype, name
        assert arr.shape == shape, name
    assert out.request_ids.tolist() == [10, 11]
    assert out.num_tokens.tolist() == [10, 3]
    assert out.context_lens.tolist() == [0, 0]
    assert out.seq_lens.tolist() == [10, 3]
    assert out.do_sample.tolist() == [True, True]
    assert out.query_start_loc.tolist() == [0, 10, 13]
    assert out.input_ids.tolist() == list(range(10)) + [50, 51, 52]
    assert out.positions.tolist() == list(range(10)) + [0, 1, 2]
    assert out.block_tables.tolist() == [[0, 1], [2, 0]]
    assert out.slot_mapping.tolist() == list(range(10)) + [16, 17, 18]
    s.update(out.seq_ids, np.array([100, 200], dtype=np.int32))
    out2 = s.schedule()
    assert out2.num_prefill_seqs == 0
    assert out2.num_tokens.tolist() == [1, 1]
    assert out2.input_ids.tolist() == [100, 200]
    assert out2.positions.tolist() == [10, 3]
    assert out2.context_lens.tolist() == [10, 3]
    assert s.seq_len(1) == 11 and s.num_computed(1) == 11
    assert s.token_ids(2) == [50, 51, 52, 200]
    assert s.block_table(1) == [0, 1]


def test_arrays_are_zero_copy_views():
    s = Scheduler(make_cfg())
    s.add_request(0, 0, list(range(40)))
    out = s.schedule()
    a = out.input_ids
    b = out.input_ids
    assert not a.flags.owndata
    assert a.base is not None
    assert np.shares_memory(a, b)  # both views of the same C++ buffer
    assert a.ctypes.data == out.input_ids.ctypes.data
    bt = out.block_tables
    del out
    gc.collect()
    s.update([0], [7])
    s.schedule()  # must not reuse the buffer still referenced by `a` / `bt`
    assert a.tolist() == list(range(40))
    assert bt.tolist() == [[0, 1, 2]]


def test_update_accepts_lists_and_arrays():
    s = Scheduler(make_cfg())
    for i in range(3):
        s.add_request(i, i, [1, 2, 3])
    s.schedule()
    s.update([0, 1], [5, 6])
    s.update(np.array([2], dtype=np.int64), np.array([7], dtype=np.int32))
    assert s.token_ids(0)[-1] == 5 and s.token_ids(2)[-1] == 7


def test_queries_fork_cow_abort_finish():
    s = Scheduler(make_cfg(block_size=8, num_device_blocks=16, num_cpu_blocks=4,
                           enable_prefix_caching=True))
    assert s.num_device_blocks() == 16 and s.num_cpu_blocks() == 4
    assert s.num_free_device_blocks() == 16 and s.num_free_cpu_blocks() == 4
    assert s.device_usage() == 0.0 and s.cpu_usage() == 0.0
    assert not s.has_unfinished()
    s.add_request(0, 0, list(range(12)))
    out = s.schedule()
    assert s.num_running() == 1 and s.has_unfinished()
    s.fork(0, 1)
    assert s.block_table(1) == s.block_table(0)
    assert [s.ref_count(b) for b in s.block_table(0)] == [2, 2]
    assert s.device_usage() == pytest.approx(2 / 16)
    s.update([0, 1], [100, 101])
    out = s.schedule()
    assert out.blocks_to_copy.shape == (1, 2)
    src, dst = out.blocks_to_copy[0]
    assert src == 1 and s.block_table(0)[1] == dst
    s.check_invariants()
    s.add_request(5, 5, list(range(12)))
    out = s.schedule()
    assert s.prefix_cache_queried_tokens() == 24
    assert s.prefix_cache_hit_tokens() == 8
    assert s.prefix_cache_hit_rate() == pytest.approx(8 / 24)
    assert out.context_lens.tolist()[0] == 8
    assert sorted(s.abort_request(0)) == [0, 1]
    s.finish_seq(5)
    assert not s.has_unfinished()
    assert s.device_usage() == 0.0
    assert s.num_free_device_blocks() == 16
    assert s.num_preemptions() == 0
    s.check_invariants()


def test_preemption_reports():
    s = Scheduler(make_cfg(block_size=8, num_device_blocks=4, num_cpu_blocks=4,
                           preemption_mode="swap", watermark=0.0))
    s.add_request(0, 0, list(range(15)), arrival_time=0.0)
    s.add_request(1, 1, list(range(15)), arrival_time=1.0)
    for _ in range(3):
        out = s.schedule()
        s.update(out.seq_ids[out.do_sample], np.full(int(out.do_sample.sum()), 3, np.int32))
    assert out.preempted_request_ids.tolist() == [1]
    assert out.blocks_to_swap_out.shape == (2, 2)
    assert s.num_swapped() == 1 and s.num_preemptions() == 1
    assert s.cpu_usage() == pytest.approx(0.5)
    s.finish_seq(0)
    out = s.schedule()
    assert out.blocks_to_swap_in.shape == (2, 2)
    assert s.num_swapped() == 0 and s.num_running() == 1
    s.check_invariants()


def test_block_allocator_binding():
    a = BlockAllocator(16, 4, 2, True)
    b = a.allocate()
    assert a.ref_count(b) == 1 and a.num_free_blocks() == 3
    a.incref(b)
    a.decref(b)
    a.decref(b)
    assert a.num_free_blocks() == 4
    a.check_invariants()


def test_micro_batch_in_flight_bindings():
    cfg = make_cfg(num_micro_batches=2)
    assert cfg.num_micro_batches == 2 and "num_micro_batches=2" in repr(cfg)
    s = Scheduler(cfg)
    for r in range(3):
        s.add_request(r, r, np.arange(4, dtype=np.int32) + 10 * r)
    a = s.schedule()
    ids_a = a.seq_ids.tolist()
    assert len(ids_a) == 2 and s.num_in_flight() == 2 and all(s.is_in_flight(i) for i in ids_a)
    b = s.schedule()
    assert not set(b.seq_ids.tolist()) & set(ids_a)
    s.clear_in_flight(np.array(ids_a + [99], dtype=np.int64))   # 99: no longer live, skipped
    assert s.num_in_flight() == 1
    with pytest.raises(ValueError, match="in flight already"):
        s.mark_in_flight(np.array(b.seq_ids, dtype=np.int64))
    with pytest.raises(ValueError, match="one-dimensional"):
        s.clear_in_flight(np.zeros((1, 1), dtype=np.int64))
    s.check_invariants()
