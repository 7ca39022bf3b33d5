"""Hypothesis stateful tests of the C++ scheduler (llmcore._core).

A shadow KV cache in Python replays every step's swap-out / swap-in / copy /
write instructions. After each step every sequence's cached tokens must be what
the shadow cache holds at its block-table slots, so a prefix-cache hit (or CoW,
swap, eviction bug) can never hand out a block with different tokens.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

pytest.importorskip("llmcore._core")
from llmcore._core import Scheduler, SchedulerConfig  # noqa: E402

MAX_MODEL_LEN = 48
VOCAB = 3  # tiny vocabulary: many shared prefixes, many prefix-cache hits


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.s = None

    @initialize(
        block_size=st.sampled_from([8, 16]),
        num_blocks=st.integers(4, 12),
        num_cpu=st.integers(0, 10),
        chunked=st.booleans(),
        caching=st.booleans(),
        mode=st.sampled_from(["recompute", "swap"]),
        max_seqs=st.integers(2, 8),
        budget=st.sampled_from([8, 24, 48, 96]),
        watermark=st.sampled_from([0.0, 0.01, 0.2]),
    )
    def setup(self, block_size, num_blocks, num_cpu, chunked, caching, mode, max_seqs,
              budget, watermark):
        cfg = SchedulerConfig()
        cfg.block_size = block_size
        # Always room for one max-length sequence.
        cfg.num_device_blocks = max(num_blocks, -(-(MAX_MODEL_LEN + 1) // block_size))
        cfg.num_cpu_blocks = num_cpu
        cfg.max_num_seqs = max_seqs
        cfg.max_model_len = MAX_MODEL_LEN
        cfg.enable_chunked_prefill = chunked
        cfg.max_num_batched_tokens = budget if chunked else max(budget, MAX_MODEL_LEN + 1)
        cfg.enable_prefix_caching = caching
        cfg.preemption_mode = mode
        cfg.watermark = watermark
        self.cfg = cfg
        self.bs = block_size
        self.s = Scheduler(cfg)
        self.shadow = np.full(cfg.num_device_blocks * block_size, -1, np.int64)
        self.cpu_shadow = np.full(max(num_cpu, 1) * block_size, -1, np.int64)
        self.requests = {}  # request id -> set of live seq ids
        self.next_id = 0
        self.rng = np.random.default_rng(0)

    # ------------------------------------------------------------------ rules

    @rule(prompts=st.lists(
        st.tuples(st.integers(1, MAX_MODEL_LEN + 4), st.integers(0, 2),
                  st.integers(0, 2**16), st.sampled_from([0, 0, 0, 7])),
        min_size=1, max_size=3))
    def add(self, prompts):
        for length, priority, seed, lora in prompts:
            prompt = np.random.default_rng(seed).integers(0, VOCAB, length).astype(np.int32)
            rid = self.next_id
            self.next_id += 1
            if length > MAX_MODEL_LEN:
                with pytest.raises(ValueError):
                    self.s.add_request(rid, rid, prompt)
                continue
            self.s.add_request(rid, rid, prompt, arrival_time=float(rid), priority=priority,
                               extra_hash_key=lora)
            self.requests[rid] = {rid}

    @rule(n=st.integers(1, 4))
    def step(self, n):
        for _ in range(n):
            self._one_step()

    @precondition(lambda self: self.requests)
    @rule(pick=st.integers(0, 10**6), child=st.integers(0, 10**6))
    def fork(self, pick, child):
        rid = sorted(self.requests)[pick % len(self.requests)]
        parent = sorted(self.requests[rid])[0]
        child_id = 10**7 + child
        if self.s.has_seq(child_id):
            return
        try:
            self.s.fork(parent, child_id)
        except ValueError:
            # Only a parent whose request is waiting or swapped out may refuse.
            assert self.s.num_computed(parent) == 0 or self.s.cpu_block_table(parent)
            return
        self.requests[rid].add(child_id)
        assert self.s.token_ids(child_id) == self.s.token_ids(parent)
        assert self.s.block_table(child_id) == self.s.block_table(parent)

    @precondition(lambda self: self.requests)
    @rule(pick=st.integers(0, 10**6), how=st.sampled_from(["abort", "finish", "unknown"]))
    def remove(self, pick, how):
        rid = sorted(self.requests)[pick % len(self.requests)]
        if how == "unknown":
            assert self.s.abort_request(10**9 + pick) == []
        elif how == "abort":
            removed = self.s.abort_request(rid)
            assert sorted(removed) == sorted(self.requests.pop(rid))
            assert not self.s.has_request(rid)
        else:
            sid = sorted(self.requests[rid])[-1]
            self.s.finish_seq(sid)
            self.requests[rid].discard(sid)
            if not self.requests[rid]:
                del self.requests[rid]
                assert not self.s.has_request(rid)

    # ------------------------------------------------------------- step logic

    def _one_step(self):
        s, bs = self.s, self.bs
        out = s.schedule()
        n = out.num_seqs
        # Replay the cache instructions on the shadow KV cache, in engine order.
        for db, cb in out.blocks_to_swap_out:
            self.cpu_shadow[cb * bs:(cb + 1) * bs] = self.shadow[db * bs:(db + 1) * bs]
        for cb, db in out.blocks_to_swap_in:
            self.shadow[db * bs:(db + 1) * bs] = self.cpu_shadow[cb * bs:(cb + 1) * bs]
        for src, dst in out.blocks_to_copy:
            self.shadow[dst * bs:(dst + 1) * bs] = self.shadow[src * bs:(src + 1) * bs]
        self.shadow[out.slot_mapping] = out.input_ids
        # Output shape / consistency checks.
        assert out.num_batched_tokens == int(out.num_tokens.sum())
        assert out.num_batched_tokens <= self.cfg.max_num_batched_tokens
        assert n <= self.cfg.max_num_seqs
        assert len(set(out.seq_ids.tolist())) == n
        assert (out.seq_lens == out.context_lens + out.num_tokens).all()
        assert out.query_start_loc[0] == 0
        assert (np.diff(out.query_start_loc) == out.num_tokens).all()
        assert (out.num_tokens[out.num_prefill_seqs:] == 1).all()
        assert (out.num_tokens >= 1).all()
        for i in range(n):
            sid = int(out.seq_ids[i])
            toks = s.token_ids(sid)
            c, k = int(out.context_lens[i]), int(out.num_tokens[i])
            lo, hi = out.query_start_loc[i], out.query_start_loc[i + 1]
            assert out.input_ids[lo:hi].tolist() == toks[c:c + k]
            assert out.positions[lo:hi].tolist() == list(range(c, c + k))
            assert bool(out.do_sample[i]) == (c + k == len(toks))
            assert s.request_of(sid) == out.request_ids[i]
            table = s.block_table(sid)
            assert out.block_tables[i, :len(table)].tolist() == table
            assert (out.block_tables[i, len(table):] == 0).all()
            if not self.cfg.enable_chunked_prefill:
                assert c + k == len(toks)  # whole prompts only
        for rid in out.preempted_request_ids.tolist():
            assert rid in self.requests
        # Engine: sample for do_sample seqs, then stop long ones.
        sampled = out.seq_ids[out.do_sample]
        tokens = self.rng.integers(0, VOCAB, len(sampled)).astype(np.int32)
        s.update(sampled, tokens)
        for sid in sampled.tolist():
            if s.seq_len(sid) >= MAX_MODEL_LEN:
                rid = s.request_of(sid)
                s.finish_seq(sid)
                self.requests[rid].discard(sid)
                if not self.requests[rid]:
                    del self.requests[rid]

    # -------------------------------------------------------------- invariants

    @invariant()
    def consistent(self):
        if self.s is None:
            return
        s, bs = self.s, self.bs
        s.check_invariants()
        owners = np.zeros(self.cfg.num_device_blocks, np.int64)
        cpu_owners = np.zeros(max(self.cfg.num_cpu_blocks, 1), np.int64)
        for rid, seqs in self.requests.items():
            assert s.has_request(rid)
            for sid in seqs:
                toks = s.token_ids(sid)
                nc = s.num_computed(sid)
                table = s.block_table(sid)
                cpu_table = s.cpu_block_table(sid)
                assert len(table) == 0 or len(cpu_table) == 0
                for b in table:
                    owners[b] += 1
                for b in cpu_table:
                    cpu_owners[b] += 1
                if table:
                    assert len(table) == -(-nc // bs)
                    slots = np.array(table, np.int64)[np.arange(nc) // bs] * bs + np.arange(nc) % bs
                    assert self.shadow[slots].tolist() == toks[:nc], f"seq {sid} KV mismatch"
                if cpu_table:
                    slots = np.array(cpu_table, np.int64)[np.arange(nc) // bs] * bs + np.arange(nc) % bs
                    assert self.cpu_shadow[slots].tolist() == toks[:nc], f"seq {sid} swap mismatch"
        for b in range(self.cfg.num_device_blocks):
            assert s.ref_count(b) == owners[b], f"block {b} ref != owners"
        assert s.num_free_device_blocks() == int((owners == 0).sum())
        if self.cfg.num_cpu_blocks:
            assert s.num_free_cpu_blocks() == int((cpu_owners[: self.cfg.num_cpu_blocks] == 0).sum())
        n_req = s.num_waiting() + s.num_running() + s.num_swapped()
        assert n_req == len(self.requests)
        assert s.has_unfinished() == bool(self.requests)
        if self.cfg.preemption_mode == "recompute" or self.cfg.num_cpu_blocks == 0:
            assert s.num_swapped() == 0
        q = s.prefix_cache_queried_tokens()
        h = s.prefix_cache_hit_tokens()
        assert 0 <= h <= q
        if not self.cfg.enable_prefix_caching:
            assert q == 0

    def teardown(self):
        if self.s is None:
            return
        # Drive everything to completion for a while, then abort the rest.
        for _ in range(5):
            self._one_step()
        for rid in list(self.requests):
            self.s.abort_request(rid)
            del self.requests[rid]
        self.s.check_invariants()
        assert not self.s.has_unfinished()
        assert self.s.device_usage() == 0.0
        assert self.s.cpu_usage() == 0.0
        assert self.s.num_free_device_blocks() == self.cfg.num_device_blocks


SchedulerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestSchedulerMachine = SchedulerMachine.TestCase
