"""Scheduler output v2 through the llmcore._core bindings: k-token decodes, placeholders
with counts, set_tokens / update_multi, rollback, is_new / finished / preempted ids."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("llmcore._core")
from llmcore._core import Scheduler, SchedulerConfig  # noqa: E402


def make(num_blocks=32, block_size=8, caching=False, **kw):
    cfg = SchedulerConfig()
    cfg.block_size = block_size
    cfg.num_device_blocks = num_blocks
    cfg.max_model_len = kw.pop("max_model_len", 128)
    cfg.max_num_batched_tokens = kw.pop("max_num_batched_tokens", 128)
    cfg.enable_prefix_caching = caching
    cfg.watermark = 0.0
    for k, v in kw.items():
        setattr(cfg, k, v)
    return Scheduler(cfg)


def ids(*xs):
    return np.array(xs, np.int64)


def i32(*xs):
    return np.array(xs, np.int32)


def prefilled(s, seq_id, n, start=0):
    s.add_request(seq_id, seq_id, np.arange(start, start + n, dtype=np.int32))
    out = s.schedule()
    assert out.is_new.tolist() == [True] and out.is_new.dtype == np.bool_
    s.update(ids(seq_id), i32(900))
    del out


def test_verify_step_is_one_decode_and_rollback_frees_blocks():
    s = make()
    prefilled(s, 0, 6)
    s.update_multi(ids(0), i32(3), i32(901, 902, 903))  # 3 drafts after the sampled token
    out = s.schedule()
    assert out.num_prefill_seqs == 0 and out.num_seqs == 1
    assert out.num_tokens.tolist() == [4] and out.context_lens.tolist() == [6]
    assert out.input_ids.tolist() == [900, 901, 902, 903]
    assert out.positions.tolist() == [6, 7, 8, 9]
    assert out.is_new.tolist() == [False]
    del out
    assert len(s.block_table(0)) == 2
    free = s.num_free_device_blocks()
    s.rollback(ids(0), i32(2))  # one draft accepted: 8 tokens, one block
    s.check_invariants()
    assert s.seq_len(0) == 8 and s.num_computed(0) == 8
    assert len(s.block_table(0)) == 1 and s.num_free_device_blocks() == free + 1
    s.update(ids(0), i32(5))
    out = s.schedule()
    assert out.num_tokens.tolist() == [1] and out.input_ids.tolist() == [5]
    s.check_invariants()


def test_placeholders_with_counts_and_set_tokens():
    s = make()
    prefilled(s, 0, 4)
    s.append_placeholders(ids(0), i32(3))
    assert s.seq_len(0) == 8
    out = s.schedule()
    assert out.num_tokens.tolist() == [4]
    del out
    s.set_tokens(ids(0, 99), i32(3, 1), i32(7, 8, 9, 123))  # 99 is gone: skipped
    assert s.token_ids(0)[-3:] == [7, 8, 9]
    s.append_placeholders(ids(0))  # the one-token form still works
    assert s.seq_len(0) == 9
    s.check_invariants()


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.append_placeholders(ids(0), i32(0)),
        lambda s: s.append_placeholders(ids(0, 0), i32(1)),
        lambda s: s.append_placeholders(ids(0, 77), i32(1, 1)),
        lambda s: s.update_multi(ids(0), i32(2), i32(1)),
        lambda s: s.update_multi(ids(0), i32(-1), i32()),
        lambda s: s.set_tokens(ids(0), i32(100), np.zeros(100, np.int32)),
        lambda s: s.set_tokens(ids(0), i32(1), i32(1, 2)),
        lambda s: s.rollback(ids(0), i32(7)),
        lambda s: s.rollback(ids(0), i32(-1)),
        lambda s: s.rollback(ids(0, 0), i32(1, 1)),
        lambda s: s.rollback(ids(0, 5), i32(1, 1)),
        lambda s: s.rollback(ids(0), np.zeros((1, 1), np.int32)),
    ],
)
def test_bad_calls_raise_value_error_and_change_nothing(call):
    s = make()
    prefilled(s, 0, 6)
    before = (s.token_ids(0), s.num_computed(0), s.block_table(0))
    with pytest.raises(ValueError):
        call(s)
    assert (s.token_ids(0), s.num_computed(0), s.block_table(0)) == before
    s.check_invariants()


def test_rollback_drops_the_hash_of_a_block_no_longer_full():
    s = make(caching=True)
    prefilled(s, 0, 5)
    s.update_multi(ids(0), i32(6), np.arange(20, 26, dtype=np.int32))
    s.schedule()
    b0 = s.block_table(0)[0]
    assert s.is_cached(b0)
    s.rollback(ids(0), i32(5))
    assert not s.is_cached(b0)
    s.check_invariants()


def test_is_new_finished_and_preempted_ids():
    s = make(num_blocks=4, num_cpu_blocks=8, preemption_mode="swap")
    s.add_request(0, 0, np.arange(16, dtype=np.int32), arrival_time=0.0)
    s.add_request(1, 1, np.arange(100, 116, dtype=np.int32), arrival_time=1.0)
    out = s.schedule()
    assert out.is_new.tolist() == [True, True]
    s.update(ids(0, 1), i32(1, 2))
    out = s.schedule()
    assert out.preempted_seq_ids.tolist() == [1] and out.preempted_request_ids.tolist() == [1]
    assert out.seq_ids.tolist() == [0] and out.is_new.tolist() == [False]
    s.finish_seq(0)
    out = s.schedule()
    assert out.finished_seq_ids.tolist() == [0]
    assert out.seq_ids.tolist() == [1] and out.is_new.tolist() == [True]
    assert out.finished_seq_ids.dtype == np.int64 and out.preempted_seq_ids.size == 0
    s.update(ids(1), i32(3))
    out = s.schedule()
    assert out.is_new.tolist() == [False] and out.finished_seq_ids.size == 0
    assert s.abort_request(1) == [1]
    assert s.schedule().finished_seq_ids.tolist() == [1]


def test_new_fields_are_zero_copy_views():
    s = make()
    s.add_request(0, 0, np.arange(4, dtype=np.int32))
    out = s.schedule()
    for name in ("is_new", "finished_seq_ids", "preempted_seq_ids"):
        a = getattr(out, name)
        assert not a.flags.owndata and a.base is not None


# --- property test -------------------------------------------------------------------

op = st.one_of(
    st.tuples(st.just("add"), st.integers(1, 30)),
    st.tuples(st.just("step"), st.integers(0, 3)),       # schedule; sampled seqs get 1 + k tokens
    st.tuples(st.just("rollback"), st.integers(0, 4)),   # reject up to n of the last tokens
    st.tuples(st.just("placeholders"), st.integers(1, 3)),
    st.tuples(st.just("finish"), st.integers(0, 5)),
    st.tuples(st.just("fork"), st.integers(0, 5)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=1, max_size=60), caching=st.booleans(),
       chunked=st.booleans(), mode=st.sampled_from(["recompute", "swap"]),
       blocks=st.integers(6, 16))
def test_random_speculative_sequences_keep_invariants_and_free_every_block(
        ops, caching, chunked, mode, blocks):
    s = make(num_blocks=blocks, caching=caching, enable_chunked_prefill=chunked,
             max_model_len=48, max_num_batched_tokens=48 if not chunked else 16,
             num_cpu_blocks=8, preemption_mode=mode, max_num_seqs=4)
    live = []
    nxt = 0
    for kind, arg in ops:
        if kind == "add" and len(live) < 6:
            s.add_request(nxt, nxt, (np.arange(arg) % 3).astype(np.int32))
            live.append(nxt)
            nxt += 1
        elif kind == "step":
            out = s.schedule()
            sampled = out.seq_ids[out.do_sample].tolist()
            assert set(out.finished_seq_ids.tolist()).isdisjoint(live)
            del out
            for sid in sampled:
                if s.seq_len(sid) + 1 + arg > 48:
                    s.finish_seq(sid)
                    live.remove(sid)
                else:
                    s.update_multi(ids(sid), i32(1 + arg), np.full(1 + arg, sid % 3, np.int32))
        elif kind == "rollback" and live:
            sid = live[arg % len(live)]
            k = min(arg, s.seq_len(sid) - 1)
            n_before = s.seq_len(sid)
            s.rollback(ids(sid), i32(k))
            assert s.seq_len(sid) == n_before - k
            assert s.num_computed(sid) <= s.seq_len(sid)
        elif kind == "placeholders" and live:
            sid = live[arg % len(live)]
            if s.seq_len(sid) + arg <= 48:
                s.append_placeholders(ids(sid), i32(arg))
                s.set_tokens(ids(sid), i32(arg), np.full(arg, 1, np.int32))
        elif kind == "finish" and live:
            sid = live.pop(arg % len(live))
            s.finish_seq(sid)
        elif kind == "fork" and live:
            parent = live[arg % len(live)]
            if s.has_seq(parent) and len(live) < 6:
                try:
                    s.fork(parent, nxt)
                except ValueError:  # parent not running
                    continue
                live.append(nxt)
                nxt += 1
        s.check_invariants()
    for sid in list(live):
        s.finish_seq(sid)
    s.check_invariants()
    assert not s.has_unfinished()
    assert s.num_free_device_blocks() == blocks
    assert s.num_free_cpu_blocks() == 8
