#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "llmcore/scheduler.h"

using namespace llmcore;

namespace {

std::vector<int32_t> toks(int start, int n) {
  std::vector<int32_t> t(n);
  std::iota(t.begin(), t.end(), start);
  return t;
}

SchedulerConfig cfg(int blocks, int bs = 16) {
  SchedulerConfig c;
  c.block_size = bs;
  c.num_device_blocks = blocks;
  c.max_model_len = 256;
  c.max_num_batched_tokens = 256;
  c.watermark = 0.0;
  return c;
}

// schedule(), check invariants, then append one token (1000 + seq id) to every
// sampled seq, like the engine does.
std::shared_ptr<SchedulerOutput> step(Scheduler& s) {
  auto out = s.schedule();
  s.check_invariants();
  std::vector<int64_t> ids;
  std::vector<int32_t> tk;
  for (int i = 0; i < out->num_seqs; ++i)
    if (out->do_sample[i]) {
      ids.push_back(out->seq_ids[i]);
      tk.push_back(static_cast<int32_t>(1000 + out->seq_ids[i]));
    }
  s.update(ids, tk);
  s.check_invariants();
  return out;
}

int find_row(const SchedulerOutput& o, int64_t seq_id) {
  for (int i = 0; i < o.num_seqs; ++i)
    if (o.seq_ids[i] == seq_id) return i;
  return -1;
}

}  // namespace

TEST(SchedulerConfig, Validation) {
  SchedulerConfig c = cfg(8);
  EXPECT_NO_THROW(c.validate());
  c.block_size = 12;
  EXPECT_THROW(Scheduler s(c), std::invalid_argument);
  c = cfg(0);
  EXPECT_THROW(Scheduler s(c), std::invalid_argument);
  c = cfg(8);
  c.max_num_batched_tokens = 100;  // < max_model_len without chunking
  EXPECT_THROW(Scheduler s(c), std::invalid_argument);
  c.enable_chunked_prefill = true;
  EXPECT_NO_THROW(Scheduler s(c));
  c.watermark = 1.5;
  EXPECT_THROW(Scheduler s(c), std::invalid_argument);
}

TEST(Scheduler, AddRequestErrors) {
  Scheduler s(cfg(4));
  s.add_request(1, 1, toks(0, 10));
  EXPECT_THROW(s.add_request(1, 2, toks(0, 10)), std::invalid_argument);
  EXPECT_THROW(s.add_request(2, 1, toks(0, 10)), std::invalid_argument);
  EXPECT_THROW(s.add_request(3, 3, std::vector<int32_t>{}), std::invalid_argument);
  EXPECT_THROW(s.add_request(4, 4, toks(0, 257)), std::invalid_argument);
  EXPECT_THROW(s.add_request(5, 5, toks(0, 65)), std::invalid_argument);  // > 4 blocks
  EXPECT_THROW(s.fork(1, 9), std::invalid_argument);  // parent waiting
  EXPECT_THROW(s.update({77}, {1}), std::invalid_argument);
  EXPECT_EQ(s.num_waiting(), 1);
  s.check_invariants();
}

TEST(Scheduler, PrefillThenDecodeOutputs) {
  Scheduler s(cfg(16, 8));
  s.add_request(10, 1, toks(0, 10));
  s.add_request(11, 2, toks(50, 3));
  auto o = step(s);
  ASSERT_EQ(o->num_seqs, 2);
  EXPECT_EQ(o->num_prefill_seqs, 2);
  EXPECT_EQ(o->num_batched_tokens, 13);
  EXPECT_EQ(o->request_ids[0], 10);
  EXPECT_EQ(o->num_tokens[0], 10);
  EXPECT_EQ(o->context_lens[0], 0);
  EXPECT_EQ(o->seq_lens[1], 3);
  EXPECT_EQ(o->query_start_loc, (std::vector<int32_t>{0, 10, 13}));
  EXPECT_TRUE(o->do_sample[0] && o->do_sample[1]);
  EXPECT_EQ(o->max_blocks, 2);
  EXPECT_EQ(o->block_tables, (std::vector<int32_t>{0, 1, 2, 0}));
  EXPECT_EQ(o->positions[9], 9);
  EXPECT_EQ(o->slot_mapping[9], 1 * 8 + 1);
  EXPECT_EQ(o->slot_mapping[10], 2 * 8 + 0);
  EXPECT_EQ(o->input_ids[10], 50);
  o = step(s);
  ASSERT_EQ(o->num_seqs, 2);
  EXPECT_EQ(o->num_prefill_seqs, 0);
  EXPECT_EQ(o->input_ids, (std::vector<int32_t>{1001, 1002}));
  EXPECT_EQ(o->positions, (std::vector<int32_t>{10, 3}));
  EXPECT_EQ(o->context_lens[0], 10);
  EXPECT_EQ(s.seq_len(1), 12);
  EXPECT_EQ(s.num_computed(1), 11);
  s.finish_seq(1);
  s.finish_seq(2);
  EXPECT_FALSE(s.has_unfinished());
  EXPECT_EQ(s.num_free_device_blocks(), 16);
  EXPECT_DOUBLE_EQ(s.device_usage(), 0.0);
  s.check_invariants();
}

TEST(Scheduler, SeqAndTokenBudgets) {
  SchedulerConfig c = cfg(64);
  c.max_num_seqs = 2;
  c.max_num_batched_tokens = 256;
  Scheduler s(c);
  for (int i = 0; i < 4; ++i) s.add_request(i, i, toks(0, 100));
  auto o = step(s);
  EXPECT_EQ(o->num_seqs, 2);  // seq budget
  EXPECT_EQ(s.num_running(), 2);
  o = step(s);
  EXPECT_EQ(o->num_seqs, 2);
  EXPECT_EQ(o->num_prefill_seqs, 0);  // running ones keep their slots
  s.abort_request(0);
  o = step(s);
  EXPECT_EQ(o->num_seqs, 2);
  EXPECT_EQ(o->num_prefill_seqs, 1);
  EXPECT_EQ(o->seq_ids[0], 2);  // FCFS
  // Token budget, no chunking: a prompt that does not fit waits whole.
  SchedulerConfig c2 = cfg(64);
  Scheduler s2(c2);
  s2.add_request(0, 0, toks(0, 200));
  s2.add_request(1, 1, toks(0, 100));  // 200 + 100 > 256
  o = step(s2);
  EXPECT_EQ(o->num_seqs, 1);
  EXPECT_EQ(o->num_batched_tokens, 200);
  o = step(s2);
  EXPECT_EQ(o->num_seqs, 2);  // decode first, then the prefill
  EXPECT_EQ(o->num_prefill_seqs, 1);
  EXPECT_EQ(o->seq_ids[0], 1);
  EXPECT_EQ(o->seq_ids[1], 0);
}

TEST(Scheduler, ChunkedPrefill) {
  SchedulerConfig c = cfg(64);
  c.enable_chunked_prefill = true;
  c.max_num_batched_tokens = 16;
  Scheduler s(c);
  s.add_request(0, 0, toks(0, 40));
  auto o = step(s);
  EXPECT_EQ(o->num_tokens[0], 16);
  EXPECT_FALSE(o->do_sample[0]);
  EXPECT_EQ(o->num_prefill_seqs, 1);
  s.add_request(1, 1, toks(100, 20));
  o = step(s);
  EXPECT_EQ(o->num_seqs, 1);  // continuing chunk uses the whole budget
  EXPECT_EQ(o->context_lens[0], 16);
  EXPECT_EQ(o->input_ids[0], 16);
  o = step(s);
  ASSERT_EQ(o->num_seqs, 2);
  EXPECT_EQ(o->seq_ids[0], 0);
  EXPECT_EQ(o->num_tokens[0], 8);
  EXPECT_TRUE(o->do_sample[0]);
  EXPECT_EQ(o->seq_ids[1], 1);
  EXPECT_EQ(o->num_tokens[1], 8);
  EXPECT_FALSE(o->do_sample[1]);
  o = step(s);
  // Decode of seq 0 is scheduled before the rest of seq 1's prefill.
  ASSERT_EQ(o->num_seqs, 2);
  EXPECT_EQ(o->num_prefill_seqs, 1);
  EXPECT_EQ(o->seq_ids[0], 1);
  EXPECT_EQ(o->num_tokens[0], 12);
  EXPECT_EQ(o->seq_ids[1], 0);
  EXPECT_EQ(o->num_tokens[1], 1);
  EXPECT_EQ(o->num_batched_tokens, 13);
}

TEST(Scheduler, ForkSharesBlocksAndCopyOnWrite) {
  Scheduler s(cfg(16, 8));
  s.add_request(0, 0, toks(0, 12));  // blocks 0 (full), 1 (4 tokens)
  auto o = s.schedule();
  s.fork(0, 1);
  s.fork(0, 2);
  EXPECT_EQ(s.ref_count(0), 3);
  EXPECT_EQ(s.ref_count(1), 3);
  EXPECT_EQ(s.block_table(1), s.block_table(0));
  EXPECT_EQ(s.token_ids(2), s.token_ids(0));
  s.check_invariants();
  s.update({0, 1, 2}, {7, 8, 9});
  o = s.schedule();
  s.check_invariants();
  ASSERT_EQ(o->num_seqs, 3);
  // Three writers into shared block 1: two copies, the last one writes in place.
  ASSERT_EQ(o->blocks_to_copy.size(), 4u);
  EXPECT_EQ(o->blocks_to_copy[0], 1);
  EXPECT_EQ(o->blocks_to_copy[2], 1);
  EXPECT_EQ(s.ref_count(1), 1);
  EXPECT_EQ(s.ref_count(0), 3);
  EXPECT_EQ(s.block_table(0)[1], o->blocks_to_copy[1]);
  EXPECT_EQ(s.block_table(2)[1], 1);
  EXPECT_EQ(o->slot_mapping[0], o->blocks_to_copy[1] * 8 + 4);
  s.finish_seq(0);
  s.finish_seq(1);
  EXPECT_EQ(s.num_running(), 1);
  EXPECT_EQ(s.ref_count(0), 1);
  s.finish_seq(2);
  EXPECT_EQ(s.num_free_device_blocks(), 16);
  s.check_invariants();
}

TEST(Scheduler, PrefixCacheHitsAndHitRate) {
  SchedulerConfig c = cfg(32);
  c.enable_prefix_caching = true;
  Scheduler s(c);
  s.add_request(0, 0, toks(0, 40));
  step(s);
  s.finish_seq(0);
  EXPECT_EQ(s.num_free_device_blocks(), 32);  // cached blocks count as free
  EXPECT_DOUBLE_EQ(s.device_usage(), 0.0);
  s.add_request(1, 1, toks(0, 40));
  auto o = step(s);
  EXPECT_EQ(o->context_lens[0], 32);
  EXPECT_EQ(o->num_tokens[0], 8);
  EXPECT_EQ(o->input_ids[0], 32);
  EXPECT_EQ(s.prefix_cache_queried_tokens(), 80);
  EXPECT_EQ(s.prefix_cache_hit_tokens(), 32);
  EXPECT_DOUBLE_EQ(s.prefix_cache_hit_rate(), 32.0 / 80.0);
  EXPECT_EQ(s.ref_count(s.block_table(1)[0]), 1);
  // Exactly block-aligned prompt: at least one token is always computed.
  s.add_request(2, 2, toks(0, 32));
  o = step(s);
  EXPECT_EQ(o->context_lens[0], 16);
  EXPECT_EQ(o->num_tokens[0], 16);
  EXPECT_EQ(s.ref_count(s.block_table(1)[0]), 2);
  // Different extra key (LoRA) or opted out: no hit.
  s.add_request(3, 3, toks(0, 40), 0.0, 0, /*extra_hash_key=*/5);
  s.add_request(4, 4, toks(0, 40), 0.0, 0, 0, /*allow_prefix_cache=*/false);
  o = step(s);
  EXPECT_EQ(o->context_lens[find_row(*o, 3)], 0);
  EXPECT_EQ(o->context_lens[find_row(*o, 4)], 0);
  // Divergent suffix after a shared first block.
  auto t = toks(0, 40);
  t[20] = -5;
  s.add_request(5, 5, t);
  o = step(s);
  EXPECT_EQ(o->context_lens[find_row(*o, 5)], 16);
  for (int64_t r : {1, 2, 3, 4, 5}) s.abort_request(r);
  EXPECT_DOUBLE_EQ(s.device_usage(), 0.0);
  s.check_invariants();
}

TEST(Scheduler, PrefixCacheEvictionLru) {
  SchedulerConfig c = cfg(6, 8);
  c.enable_prefix_caching = true;
  Scheduler s(c);
  s.add_request(0, 0, toks(0, 17));    // blocks 0,1 full + 2
  step(s);
  s.finish_seq(0);
  s.add_request(1, 1, toks(100, 17));  // blocks 3,4 full + 5
  step(s);
  s.finish_seq(1);
  EXPECT_EQ(s.num_free_device_blocks(), 6);
  // Request 0 got blocks 0,1,2 (0,1 cached), request 1 got 2,3,4 (2,3 cached);
  // the LRU list is [1, 0, 3, 2] (each tail freed before its head), free: 5, 4.
  // A 3-block allocation uses the plain free blocks first, then evicts block 1.
  s.add_request(2, 2, toks(500, 17));
  step(s);
  auto bt = s.block_table(2);
  std::sort(bt.begin(), bt.end());
  EXPECT_EQ(bt, (std::vector<int32_t>{1, 4, 5}));
  EXPECT_FALSE(s.allocator().is_cached(1));
  EXPECT_TRUE(s.allocator().is_cached(0));
  EXPECT_TRUE(s.allocator().is_cached(2));
  EXPECT_TRUE(s.allocator().is_cached(3));
  s.add_request(3, 3, toks(0, 17));  // block 0 still cached, block 1 evicted
  auto o = step(s);
  EXPECT_EQ(o->context_lens[find_row(*o, 3)], 8);
  EXPECT_EQ(s.block_table(3)[0], 0);
  s.check_invariants();
}

TEST(Scheduler, PreemptRecompute) {
  SchedulerConfig c = cfg(4, 8);
  Scheduler s(c);
  s.add_request(0, 0, toks(0, 15), 0.0);
  s.add_request(1, 1, toks(100, 15), 1.0);
  auto o = step(s);
  EXPECT_EQ(o->num_seqs, 2);  // 2 blocks each, pool full
  o = step(s);                // both reach 16 tokens: still fit
  EXPECT_EQ(o->num_seqs, 2);
  o = step(s);  // both need a 3rd block: the later arrival is preempted
  EXPECT_EQ(o->preempted_request_ids, (std::vector<int64_t>{1}));
  EXPECT_EQ(o->num_seqs, 1);
  EXPECT_EQ(o->seq_ids[0], 0);
  EXPECT_EQ(s.num_preemptions(), 1);
  EXPECT_EQ(s.num_waiting(), 1);
  EXPECT_EQ(s.num_computed(1), 0);
  EXPECT_TRUE(s.block_table(1).empty());
  EXPECT_EQ(s.seq_len(1), 17);
  s.finish_seq(0);
  o = step(s);
  ASSERT_EQ(o->num_seqs, 1);
  EXPECT_EQ(o->num_prefill_seqs, 1);
  EXPECT_EQ(o->num_tokens[0], 17);  // prompt + generated tokens recomputed
  EXPECT_EQ(o->input_ids[16], 1001);
  EXPECT_TRUE(o->do_sample[0]);
  s.check_invariants();
}

TEST(Scheduler, PreemptSelfWhenLast) {
  SchedulerConfig c = cfg(2, 8);
  c.max_model_len = 64;
  c.max_num_batched_tokens = 64;
  Scheduler s(c);
  s.add_request(0, 0, toks(0, 16));
  step(s);
  auto o = step(s);  // needs a 3rd block, nothing else to preempt
  EXPECT_EQ(o->num_seqs, 0);
  EXPECT_EQ(o->preempted_request_ids, (std::vector<int64_t>{0}));
  EXPECT_EQ(s.num_waiting(), 1);
  s.check_invariants();
}

TEST(Scheduler, PriorityOrder) {
  SchedulerConfig c = cfg(4, 8);
  c.max_num_seqs = 1;
  Scheduler s(c);
  s.add_request(0, 0, toks(0, 4), 0.0, /*priority=*/5);
  s.add_request(1, 1, toks(0, 4), 1.0, /*priority=*/0);
  auto o = step(s);
  EXPECT_EQ(o->seq_ids[0], 1);
}

TEST(Scheduler, PreemptSwapAndSwapIn) {
  SchedulerConfig c = cfg(4, 8);
  c.num_cpu_blocks = 4;
  c.preemption_mode = PreemptionMode::kSwap;
  Scheduler s(c);
  s.add_request(0, 0, toks(0, 15), 0.0);
  s.add_request(1, 1, toks(100, 15), 1.0);
  step(s);
  step(s);
  auto before = s.block_table(1);
  auto o = step(s);
  EXPECT_EQ(o->preempted_request_ids, (std::vector<int64_t>{1}));
  EXPECT_EQ(s.num_swapped(), 1);
  ASSERT_EQ(o->blocks_to_swap_out.size(), 4u);
  EXPECT_EQ(o->blocks_to_swap_out[0], before[0]);
  EXPECT_EQ(o->blocks_to_swap_out[2], before[1]);
  EXPECT_EQ(s.num_free_cpu_blocks(), 2);
  EXPECT_DOUBLE_EQ(s.cpu_usage(), 0.5);
  EXPECT_EQ(s.num_computed(1), 16);  // kept on the CPU side
  s.add_request(2, 2, toks(300, 4));  // must not overtake the swapped request
  s.finish_seq(0);
  o = step(s);
  ASSERT_EQ(o->blocks_to_swap_in.size(), 4u);
  EXPECT_EQ(s.num_swapped(), 0);
  EXPECT_EQ(s.num_free_cpu_blocks(), 4);
  EXPECT_EQ(o->seq_ids[find_row(*o, 1)], 1);
  EXPECT_EQ(o->context_lens[find_row(*o, 1)], 16);  // decode right after swap-in
  EXPECT_EQ(s.block_table(1)[0], o->blocks_to_swap_in[1]);
  s.check_invariants();
}

TEST(Scheduler, SwapFallsBackToRecomputeWhenCpuPoolFull) {
  SchedulerConfig c = cfg(4, 8);
  c.num_cpu_blocks = 1;
  c.preemption_mode = PreemptionMode::kSwap;
  Scheduler s(c);
  s.add_request(0, 0, toks(0, 15), 0.0);
  s.add_request(1, 1, toks(100, 15), 1.0);
  step(s);
  step(s);
  auto o = step(s);
  EXPECT_EQ(o->preempted_request_ids, (std::vector<int64_t>{1}));
  EXPECT_EQ(s.num_swapped(), 0);
  EXPECT_EQ(s.num_waiting(), 1);
  EXPECT_TRUE(o->blocks_to_swap_out.empty());
  s.check_invariants();
}

TEST(Scheduler, SwapOfForkedGroupSharesCpuBlocks) {
  SchedulerConfig c = cfg(6, 8);
  c.num_cpu_blocks = 6;
  c.preemption_mode = PreemptionMode::kSwap;
  Scheduler s(c);
  s.add_request(0, 0, toks(0, 12), 0.0);
  step(s);
  s.fork(0, 5);
  s.add_request(1, 1, toks(100, 20), 1.0);
  step(s);  // 0/5 CoW their shared block; request 1 uses 3 blocks
  EXPECT_EQ(s.num_free_device_blocks(), 0);
  // Request 1 is latest: force a preemption by growing request 0 past its blocks.
  for (int i = 0; i < 4; ++i) step(s);
  EXPECT_GE(s.num_preemptions(), 1);
  s.check_invariants();
  // Finish sequences at 22 tokens (3 blocks each): the group always fits again.
  for (int it = 0; it < 200 && s.has_unfinished(); ++it) {
    auto o = step(s);
    for (int i = 0; i < o->num_seqs; ++i)
      if (s.seq_len(o->seq_ids[i]) > 22) s.finish_seq(o->seq_ids[i]);
  }
  EXPECT_FALSE(s.has_unfinished());
  EXPECT_EQ(s.num_free_device_blocks(), 6);
  EXPECT_EQ(s.num_free_cpu_blocks(), 6);
  s.check_invariants();
}

TEST(Scheduler, AbortInEveryState) {
  SchedulerConfig c = cfg(4, 8);
  c.num_cpu_blocks = 4;
  c.preemption_mode = PreemptionMode::kSwap;
  Scheduler s(c);
  EXPECT_TRUE(s.abort_request(42).empty());
  s.add_request(0, 0, toks(0, 15), 0.0);
  s.add_request(1, 1, toks(100, 15), 1.0);
  step(s);
  s.fork(0, 7);
  step(s);  // CoW of 0/7's shared last block needs a block: request 1 swapped out
  ASSERT_EQ(s.num_swapped(), 1);
  ASSERT_EQ(s.num_running(), 1);
  s.add_request(2, 2, toks(0, 4), 2.0);
  ASSERT_EQ(s.num_waiting(), 1);
  auto removed = s.abort_request(1);  // swapped
  EXPECT_EQ(removed, (std::vector<int64_t>{1}));
  EXPECT_EQ(s.num_free_cpu_blocks(), 4);
  s.check_invariants();
  EXPECT_EQ(s.abort_request(2), (std::vector<int64_t>{2}));  // waiting
  removed = s.abort_request(0);  // running, forked
  std::sort(removed.begin(), removed.end());
  EXPECT_EQ(removed, (std::vector<int64_t>{0, 7}));
  EXPECT_FALSE(s.has_unfinished());
  EXPECT_EQ(s.num_free_device_blocks(), 4);
  EXPECT_FALSE(s.has_seq(0));
  EXPECT_THROW(s.block_table(0), std::invalid_argument);
  s.check_invariants();
}

TEST(Scheduler, WatermarkBlocksAdmission) {
  SchedulerConfig c = cfg(10, 8);
  c.watermark = 0.2;  // 2 blocks
  Scheduler s(c);
  s.add_request(0, 0, toks(0, 40));  // 5 blocks
  s.add_request(1, 1, toks(0, 20));  // 3 blocks: 10 - 5 - 3 = 2 >= 2 ok
  s.add_request(2, 2, toks(0, 4));   // 1 block: 1 < 2 -> waits
  auto o = step(s);
  EXPECT_EQ(o->num_seqs, 2);
  EXPECT_EQ(s.num_waiting(), 1);
}

TEST(Scheduler, OutputRecycledOnlyWhenReleased) {
  Scheduler s(cfg(8, 8));
  s.add_request(0, 0, toks(0, 4));
  auto o1 = s.schedule();
  SchedulerOutput* p1 = o1.get();
  auto o2 = s.schedule();  // o1 still held: must be a new object
  EXPECT_NE(o2.get(), p1);
  EXPECT_EQ(o1->num_seqs, 1);
  o1.reset();
  SchedulerOutput* p2 = o2.get();
  o2.reset();
  auto o3 = s.schedule();
  EXPECT_EQ(o3.get(), p2);
}

TEST(Scheduler, RandomizedInvariants) {
  for (int mode = 0; mode < 8; ++mode) {
    SchedulerConfig c = cfg(12, 8);
    c.max_model_len = 64;
    c.max_num_batched_tokens = (mode & 1) ? 24 : 64;
    c.enable_chunked_prefill = mode & 1;
    c.enable_prefix_caching = mode & 2;
    c.preemption_mode = (mode & 4) ? PreemptionMode::kSwap : PreemptionMode::kRecompute;
    c.num_cpu_blocks = 6;
    c.max_num_seqs = 6;
    Scheduler s(c);
    uint64_t rng = 12345 + mode;
    auto rnd = [&](int n) {
      rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
      return static_cast<int>((rng >> 33) % static_cast<uint64_t>(n));
    };
    int64_t next_id = 0;
    for (int it = 0; it < 400; ++it) {
      int a = rnd(10);
      if (a < 3) {
        int len = 1 + rnd(40);
        std::vector<int32_t> p(len);
        for (auto& t : p) t = rnd(3);  // tiny vocab: many prefix hits
        s.add_request(next_id, next_id, p, it, rnd(2));
        ++next_id;
      } else if (a < 8) {
        auto o = step(s);
        for (int i = 0; i < o->num_seqs; ++i) {
          int64_t sid = o->seq_ids[i];
          if (s.has_seq(sid) && s.seq_len(sid) > 45 + rnd(10)) s.finish_seq(sid);
        }
      } else if (a == 8 && next_id > 0) {
        s.abort_request(rnd(static_cast<int>(next_id)));
      } else if (next_id > 0) {
        int64_t sid = rnd(static_cast<int>(next_id));
        if (s.has_seq(sid) && s.num_running() > 0) {
          try {
            s.fork(sid, 100000 + next_id * 10 + rnd(10));
          } catch (const std::invalid_argument&) {
          }
        }
      }
      s.check_invariants();
    }
    for (int64_t r = 0; r < next_id; ++r) s.abort_request(r);
    EXPECT_FALSE(s.has_unfinished());
    EXPECT_DOUBLE_EQ(s.device_usage(), 0.0);
    EXPECT_EQ(s.num_free_cpu_blocks(), 6);
    s.check_invariants();
  }
}

TEST(Scheduler, SetLastTokensFixesPlaceholderAndSkipsDeadSeqs) {
  Scheduler s(cfg(16, 8));
  s.add_request(0, 0, toks(0, 5));
  s.add_request(1, 1, toks(100, 3));
  s.schedule();
  s.update({0, 1}, {-1, -1});  // placeholders, as a pipelined engine appends them
  const int64_t ids[] = {0, 1, 42};
  const int32_t vals[] = {7, 8, 9};
  s.finish_seq(1);
  s.set_last_tokens(ids, vals, 3);  // seq 1 finished, 42 never existed: skipped
  EXPECT_EQ(s.token_ids(0).size(), 6u);
  EXPECT_EQ(s.token_ids(0).back(), 7);
  auto o = s.schedule();
  ASSERT_EQ(o->num_seqs, 1);
  EXPECT_EQ(o->input_ids[0], 7);  // the decode step reads the fixed token
  s.check_invariants();
}

TEST(Scheduler, PlaceholderBlocksAreNotCachedUntilKnown) {
  SchedulerConfig c = cfg(32, 8);
  c.enable_prefix_caching = true;
  Scheduler s(c);
  s.add_request(0, 0, toks(0, 15));  // block 0 full, block 1 holds 7 of 8
  s.schedule();
  const int64_t id0[] = {0};
  s.append_placeholders(id0, 1);  // token 15 (fills block 1) unknown yet
  auto o = s.schedule();          // computes the placeholder's position
  ASSERT_EQ(o->num_seqs, 1);
  s.check_invariants();
  // Block 1 holds the placeholder (stored as 0): a prompt with 0 there must not hit it.
  std::vector<int32_t> p = toks(0, 15);
  p.push_back(0);
  p.push_back(100);
  s.add_request(1, 1, p);
  o = s.schedule();
  EXPECT_EQ(o->context_lens[find_row(*o, 1)], 8);  // only block 0
  const int32_t v[] = {99};
  s.set_last_tokens(id0, v, 1);
  s.append_placeholders(id0, 1);
  s.schedule();  // block 1 of seq 0 is known now and gets registered
  p[15] = 99;  // the real token
  s.add_request(2, 2, p);
  o = s.schedule();
  EXPECT_EQ(o->context_lens[find_row(*o, 2)], 16);
  s.check_invariants();
}
