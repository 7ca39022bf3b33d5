// Scheduler output v2: k-token decodes, set_tokens / update_multi, rollback,
// is_new / finished / preempted ids.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
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

SchedulerConfig cfg(int blocks, int bs = 8) {
  SchedulerConfig c;
  c.block_size = bs;
  c.num_device_blocks = blocks;
  c.max_model_len = 256;
  c.max_num_batched_tokens = 256;
  c.watermark = 0.0;
  return c;
}

int find_row(const SchedulerOutput& o, int64_t seq_id) {
  for (int i = 0; i < o.num_seqs; ++i)
    if (o.seq_ids[i] == seq_id) return i;
  return -1;
}

void append(Scheduler& s, int64_t seq, std::vector<int32_t> vals) {
  const int32_t k = static_cast<int32_t>(vals.size());
  s.update_multi(&seq, &k, vals.data(), 1);
}

void rollback(Scheduler& s, int64_t seq, int32_t k) { s.rollback(&seq, &k, 1); }

// Prefill seq 0 (prompt of `len`) and sample one token: afterwards it decodes.
void prefill(Scheduler& s, int64_t id, int len, int start = 0) {
  s.add_request(id, id, toks(start, len));
  auto o = s.schedule();
  s.check_invariants();
  ASSERT_GE(find_row(*o, id), 0);
  append(s, id, {900});
}

}  // namespace

TEST(SchedulerV2, KTokenDecodeIsOneDecodeEntry) {
  Scheduler s(cfg(16));
  prefill(s, 0, 10);
  append(s, 0, {901, 902, 903});  // 3 draft tokens after the sampled one
  auto o = s.schedule();
  s.check_invariants();
  ASSERT_EQ(o->num_seqs, 1);
  EXPECT_EQ(o->num_prefill_seqs, 0);  // the prompt is computed: a decode, of 4 tokens
  EXPECT_EQ(o->num_tokens[0], 4);
  EXPECT_EQ(o->context_lens[0], 10);
  EXPECT_EQ(o->seq_lens[0], 14);
  EXPECT_EQ(o->num_batched_tokens, 4);
  EXPECT_EQ(o->do_sample[0], 1);
  EXPECT_EQ(o->is_new[0], 0);
  EXPECT_EQ(std::vector<int32_t>(o->input_ids.begin(), o->input_ids.begin() + 4),
            (std::vector<int32_t>{900, 901, 902, 903}));
  EXPECT_EQ(o->positions[0], 10);
  EXPECT_EQ(o->positions[3], 13);
  const auto& bt = s.block_table(0);
  ASSERT_EQ(bt.size(), 2u);
  EXPECT_EQ(o->slot_mapping[3], static_cast<int64_t>(bt[1]) * 8 + 5);
  EXPECT_EQ(s.num_computed(0), 14);
}

TEST(SchedulerV2, DecodesFollowPrefillsAndKeepTheBudget) {
  SchedulerConfig c = cfg(32);
  c.max_num_batched_tokens = 20;
  c.max_model_len = 20;
  Scheduler s(c);
  prefill(s, 0, 6);
  append(s, 0, {1, 2, 3, 4});  // 5 uncomputed tokens
  s.add_request(1, 1, toks(50, 12));
  auto o = s.schedule();  // running decode (5) first, then a prefill of 12 fits (17 <= 20)
  s.check_invariants();
  ASSERT_EQ(o->num_seqs, 2);
  EXPECT_EQ(o->num_prefill_seqs, 1);
  EXPECT_EQ(o->seq_ids[0], 1);  // prefills come first in the output
  EXPECT_EQ(o->seq_ids[1], 0);
  EXPECT_EQ(o->num_tokens[1], 5);
  EXPECT_EQ(o->query_start_loc[2], 17);
  // A decode longer than what is left of the budget waits (no chunking) ...
  append(s, 0, std::vector<int32_t>(8, 7));
  append(s, 1, {5});
  s.add_request(2, 2, toks(100, 15));
  o = s.schedule();
  s.check_invariants();
  ASSERT_EQ(o->num_seqs, 2);  // seq 0: 8, seq 1: 1 -> 9; the 15-token prompt does not fit
  EXPECT_EQ(o->num_prefill_seqs, 0);
  EXPECT_EQ(o->num_batched_tokens, 9);
}

TEST(SchedulerV2, KTokenDecodeChunksWhenChunkedPrefillIsOn) {
  SchedulerConfig c = cfg(32);
  c.enable_chunked_prefill = true;
  c.max_num_batched_tokens = 4;
  Scheduler s(c);
  prefill(s, 0, 3);
  append(s, 0, {1, 2, 3, 4, 5});  // 6 uncomputed > budget 4
  auto o = s.schedule();
  s.check_invariants();
  ASSERT_EQ(o->num_seqs, 1);
  EXPECT_EQ(o->num_prefill_seqs, 0);
  EXPECT_EQ(o->num_tokens[0], 4);
  EXPECT_EQ(o->do_sample[0], 0);
  o = s.schedule();
  EXPECT_EQ(o->num_tokens[0], 2);
  EXPECT_EQ(o->do_sample[0], 1);
  s.check_invariants();
}

TEST(SchedulerV2, PlaceholdersWithCountsAndSetTokens) {
  SchedulerConfig c = cfg(16);
  c.enable_prefix_caching = true;
  Scheduler s(c);
  prefill(s, 0, 5);  // 6 tokens, 5 computed
  const int64_t id = 0;
  const int32_t k = 3;
  s.append_placeholders(&id, &k, 1);  // 9 tokens: 6, 7, 8 unknown
  EXPECT_EQ(s.seq_len(0), 9);
  auto o = s.schedule();  // computes 4: block 0 is full but holds placeholders
  s.check_invariants();
  EXPECT_EQ(o->num_tokens[0], 4);
  EXPECT_EQ(o->num_prefill_seqs, 0);
  EXPECT_FALSE(s.allocator().is_cached(s.block_table(0)[0]));
  const std::vector<int32_t> vals = {70, 71, 72};
  s.set_tokens(&id, &k, vals.data(), 1);
  EXPECT_EQ(s.token_ids(0)[6], 70);
  EXPECT_EQ(s.token_ids(0)[8], 72);
  append(s, 0, {73});
  o = s.schedule();  // now the block's tokens are known: it is registered
  s.check_invariants();
  EXPECT_TRUE(s.allocator().is_cached(s.block_table(0)[0]));
  EXPECT_EQ(s.allocator().cached_tokens(s.block_table(0)[0])[7], 71);
  // Validation: nothing changes on a bad call.
  const int64_t ids2[2] = {0, 77};
  const int32_t bad_counts[2] = {1, 0};
  EXPECT_THROW(s.append_placeholders(ids2, bad_counts, 2), std::invalid_argument);
  const int32_t zero = 0;
  EXPECT_THROW(s.append_placeholders(&id, &zero, 1), std::invalid_argument);
  const int32_t too_many = 100;
  EXPECT_THROW(s.set_tokens(&id, &too_many, vals.data(), 1), std::invalid_argument);
  const int32_t into_cache = 9;  // would rewrite tokens of the registered block
  std::vector<int32_t> nine(9, 1);
  EXPECT_THROW(s.set_tokens(&id, &into_cache, nine.data(), 1), std::invalid_argument);
  EXPECT_THROW(s.update_multi(ids2, bad_counts, vals.data(), 2), std::invalid_argument);
  EXPECT_EQ(s.seq_len(0), 10);
  // Dead ids are skipped together with their values.
  const int64_t ids3[2] = {77, 0};
  const int32_t counts3[2] = {2, 1};
  const int32_t vals3[3] = {1, 2, 99};
  s.set_tokens(ids3, counts3, vals3, 2);
  EXPECT_EQ(s.token_ids(0).back(), 99);
  s.check_invariants();
}

TEST(SchedulerV2, RollbackFreesBlocksAndShrinksCounts) {
  Scheduler s(cfg(16));
  prefill(s, 0, 6);  // 7 tokens, 6 computed
  append(s, 0, toks(10, 9));  // 16 tokens
  s.schedule();
  s.check_invariants();
  EXPECT_EQ(s.num_computed(0), 16);
  EXPECT_EQ(s.block_table(0).size(), 2u);
  const int free_before = s.num_free_device_blocks();
  rollback(s, 0, 7);  // accept 2 of 9 drafts -> 9 tokens, 2 blocks... no: ceil(9/8) = 2
  s.check_invariants();
  EXPECT_EQ(s.seq_len(0), 9);
  EXPECT_EQ(s.num_computed(0), 9);
  EXPECT_EQ(s.block_table(0).size(), 2u);
  rollback(s, 0, 2);  // 7 tokens: the second block goes back
  s.check_invariants();
  EXPECT_EQ(s.block_table(0).size(), 1u);
  EXPECT_EQ(s.num_free_device_blocks(), free_before + 1);
  EXPECT_EQ(s.token_ids(0), (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 900}));
  append(s, 0, {5});  // the bonus token
  auto o = s.schedule();  // only the new token is uncomputed
  s.check_invariants();
  EXPECT_EQ(o->num_tokens[0], 1);
  EXPECT_EQ(o->context_lens[0], 7);
  EXPECT_EQ(o->input_ids[0], 5);
  // Rolling back uncomputed tokens only touches the token list.
  append(s, 0, {1, 2, 3});
  rollback(s, 0, 3);
  EXPECT_EQ(s.seq_len(0), 8);
  EXPECT_EQ(s.num_computed(0), 8);
  s.check_invariants();
  s.finish_seq(0);
  s.check_invariants();
  EXPECT_EQ(s.num_free_device_blocks(), 16);
}

TEST(SchedulerV2, RollbackValidatesFirst) {
  Scheduler s(cfg(16));
  prefill(s, 0, 6);
  s.add_request(1, 1, toks(0, 4));
  const int64_t ids[2] = {0, 1};
  const int32_t too_many[2] = {1, 4};  // seq 1 would keep no token
  EXPECT_THROW(s.rollback(ids, too_many, 2), std::invalid_argument);
  const int32_t negative[2] = {1, -1};
  EXPECT_THROW(s.rollback(ids, negative, 2), std::invalid_argument);
  const int64_t dup[2] = {0, 0};
  const int32_t ones[2] = {1, 1};
  EXPECT_THROW(s.rollback(dup, ones, 2), std::invalid_argument);
  const int64_t unknown[2] = {0, 5};
  EXPECT_THROW(s.rollback(unknown, ones, 2), std::invalid_argument);
  EXPECT_EQ(s.seq_len(0), 7);  // nothing changed
  EXPECT_EQ(s.seq_len(1), 4);
  s.rollback(ids, ones, 2);  // a waiting seq can roll back too
  EXPECT_EQ(s.seq_len(0), 6);
  EXPECT_EQ(s.seq_len(1), 3);
  s.check_invariants();
}

TEST(SchedulerV2, RollbackDropsHashOfBlockNoLongerFull) {
  SchedulerConfig c = cfg(16);
  c.enable_prefix_caching = true;
  Scheduler s(c);
  prefill(s, 0, 5);  // 6 tokens
  append(s, 0, toks(20, 6));  // 12 tokens: block 0 full after this step
  s.schedule();
  s.check_invariants();
  const int32_t b0 = s.block_table(0)[0];
  ASSERT_TRUE(s.allocator().is_cached(b0));
  rollback(s, 0, 5);  // 7 tokens: block 0 no longer full
  s.check_invariants();
  EXPECT_FALSE(s.allocator().is_cached(b0));
  EXPECT_EQ(s.block_table(0).size(), 1u);
  EXPECT_EQ(s.block_table(0)[0], b0);
  append(s, 0, {55});  // write into b0 again (sole owner: no copy)
  auto o = s.schedule();
  s.check_invariants();
  EXPECT_TRUE(o->blocks_to_copy.empty());
  append(s, 0, toks(60, 8));
  s.schedule();
  s.check_invariants();
  EXPECT_TRUE(s.allocator().is_cached(b0));  // re-registered with its new tokens
  EXPECT_EQ(s.allocator().cached_tokens(b0)[7], 55);
  // A new request with the old prefix must not hit b0.
  std::vector<int32_t> old = {0, 1, 2, 3, 4, 900, 20, 21, 22};
  s.add_request(5, 5, old);
  s.schedule();
  s.check_invariants();
  EXPECT_NE(s.block_table(5)[0], b0);
}

TEST(SchedulerV2, RollbackOfCowSharedBlock) {
  Scheduler s(cfg(16));
  prefill(s, 0, 5);  // 6 tokens, 5 computed
  s.schedule();      // computes the sampled token: 6 computed
  s.fork(0, 1);      // child shares block 0 (partial: 6 of 8)
  const int32_t shared = s.block_table(0)[0];
  EXPECT_EQ(s.ref_count(shared), 2);
  append(s, 0, {1, 2, 3, 4});  // parent: 10 tokens
  auto o = s.schedule();       // CoW of the shared partial block for the parent
  s.check_invariants();
  ASSERT_EQ(o->blocks_to_copy.size(), 2u);
  EXPECT_EQ(o->blocks_to_copy[0], shared);
  const int32_t copy = static_cast<int32_t>(o->blocks_to_copy[1]);
  EXPECT_EQ(s.block_table(0)[0], copy);
  EXPECT_EQ(s.ref_count(shared), 1);
  rollback(s, 0, 3);  // parent 7 tokens: its second block goes, the copy stays
  s.check_invariants();
  EXPECT_EQ(s.block_table(0).size(), 1u);
  EXPECT_EQ(s.ref_count(copy), 1);
  // Child rolls back into the shared block, then both write: no copy needed any more.
  rollback(s, 1, 2);
  s.check_invariants();
  EXPECT_EQ(s.num_computed(1), 4);
  append(s, 1, {8});
  o = s.schedule();
  s.check_invariants();
  EXPECT_TRUE(o->blocks_to_copy.empty());
  s.finish_seq(0);
  s.finish_seq(1);
  s.check_invariants();
  EXPECT_EQ(s.num_free_device_blocks(), 16);
}

TEST(SchedulerV2, RollbackIntoBlockSharedWithForkKeepsSiblingIntact) {
  SchedulerConfig c = cfg(16);
  c.enable_prefix_caching = true;
  Scheduler s(c);
  prefill(s, 0, 9);  // 10 tokens, 9 computed: block 0 full and cached
  const int32_t b0 = s.block_table(0)[0];
  ASSERT_TRUE(s.allocator().is_cached(b0));
  s.schedule();
  s.fork(0, 1);
  EXPECT_EQ(s.ref_count(b0), 2);
  rollback(s, 0, 5);  // parent 5 tokens: b0 partial for it, still full for the child
  s.check_invariants();
  EXPECT_FALSE(s.allocator().is_cached(b0));
  append(s, 0, {42});
  auto o = s.schedule();  // the parent's write goes to a copy: the child keeps b0
  s.check_invariants();
  ASSERT_GE(o->blocks_to_copy.size(), 2u);
  EXPECT_EQ(o->blocks_to_copy[0], b0);
  EXPECT_EQ(s.block_table(1)[0], b0);
  EXPECT_NE(s.block_table(0)[0], b0);
  EXPECT_EQ(s.ref_count(b0), 1);
}

TEST(SchedulerV2, IsNewOnlyOnTheFirstChunk) {
  SchedulerConfig c = cfg(8);
  c.enable_chunked_prefill = true;
  c.max_num_batched_tokens = 8;
  Scheduler s(c);
  s.add_request(0, 0, toks(0, 12));
  auto o = s.schedule();
  EXPECT_EQ(o->is_new[0], 1);
  EXPECT_EQ(o->num_prefill_seqs, 1);
  o = s.schedule();
  EXPECT_EQ(o->is_new[0], 0);
  EXPECT_EQ(o->num_prefill_seqs, 1);
  s.check_invariants();
}

TEST(SchedulerV2, IsNewAcrossAddForkAndRecomputePreemption) {
  Scheduler s(cfg(6));
  s.add_request(0, 0, toks(0, 12));
  auto o = s.schedule();
  EXPECT_EQ(o->is_new[0], 1);
  append(s, 0, {1});
  o = s.schedule();
  EXPECT_EQ(o->is_new[0], 0);
  append(s, 0, {1});
  s.fork(0, 1);
  append(s, 1, {2});
  s.add_request(2, 2, toks(50, 24), 0.0, -1);  // higher priority, 3 blocks
  o = s.schedule();
  s.check_invariants();
  ASSERT_EQ(o->num_seqs, 3);
  EXPECT_EQ(o->is_new[find_row(*o, 0)], 0);
  EXPECT_EQ(o->is_new[find_row(*o, 1)], 1);
  EXPECT_EQ(o->is_new[find_row(*o, 2)], 1);
  EXPECT_EQ(s.num_free_device_blocks(), 0);
  for (int i = 0; i < 4; ++i) {  // request 0's seqs grow until they need a block
    append(s, 0, {3});
    append(s, 1, {4});
    o = s.schedule();
    s.check_invariants();
    if (!o->preempted_seq_ids.empty()) break;
  }
  ASSERT_EQ(o->preempted_request_ids.size(), 1u);
  EXPECT_EQ(o->preempted_request_ids[0], 0);
  std::vector<int64_t> pre(o->preempted_seq_ids.begin(), o->preempted_seq_ids.end());
  std::sort(pre.begin(), pre.end());
  EXPECT_EQ(pre, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(s.num_waiting(), 1);
  s.finish_seq(2);
  o = s.schedule();  // recomputed: both rows are new again
  s.check_invariants();
  ASSERT_EQ(o->num_seqs, 2);
  EXPECT_EQ(o->num_prefill_seqs, 2);
  EXPECT_EQ(o->is_new[0], 1);
  EXPECT_EQ(o->is_new[1], 1);
  ASSERT_EQ(o->finished_seq_ids.size(), 1u);
  EXPECT_EQ(o->finished_seq_ids[0], 2);
}

TEST(SchedulerV2, IsNewAfterSwap) {
  SchedulerConfig c = cfg(4);
  c.num_cpu_blocks = 8;
  c.preemption_mode = PreemptionMode::kSwap;
  Scheduler s(c);
  s.add_request(0, 0, toks(0, 16), 0.0);
  s.add_request(1, 1, toks(100, 16), 1.0);
  auto o = s.schedule();
  EXPECT_EQ(o->is_new[0], 1);
  EXPECT_EQ(o->is_new[1], 1);
  append(s, 0, {1});
  append(s, 1, {2});
  o = s.schedule();  // both need a new block (4 used of 4): request 1 is swapped out
  s.check_invariants();
  ASSERT_EQ(o->preempted_seq_ids.size(), 1u);
  EXPECT_EQ(o->preempted_seq_ids[0], 1);
  EXPECT_EQ(s.num_swapped(), 1);
  EXPECT_EQ(o->is_new[find_row(*o, 0)], 0);
  s.finish_seq(0);
  o = s.schedule();  // swapped back in
  s.check_invariants();
  ASSERT_EQ(o->num_seqs, 1);
  EXPECT_FALSE(o->blocks_to_swap_in.empty());
  EXPECT_EQ(o->seq_ids[0], 1);
  EXPECT_EQ(o->is_new[0], 1);
  ASSERT_EQ(o->finished_seq_ids.size(), 1u);
  EXPECT_EQ(o->finished_seq_ids[0], 0);
  append(s, 1, {3});
  o = s.schedule();
  EXPECT_EQ(o->is_new[0], 0);
}

TEST(SchedulerV2, FinishedIdsReportedOnce) {
  Scheduler s(cfg(16));
  s.add_request(0, 0, toks(0, 4));
  s.add_request(1, 1, toks(0, 4));
  s.add_request(2, 2, toks(0, 4));
  s.schedule();
  s.fork(1, 3);
  s.finish_seq(0);
  EXPECT_EQ(s.abort_request(1), (std::vector<int64_t>{1, 3}));
  s.add_request(9, 9, toks(0, 4));
  s.abort_request(9);  // never scheduled: still reported
  auto o = s.schedule();
  s.check_invariants();
  std::vector<int64_t> f(o->finished_seq_ids.begin(), o->finished_seq_ids.end());
  EXPECT_EQ(f, (std::vector<int64_t>{0, 1, 3, 9}));
  o = s.schedule();
  EXPECT_TRUE(o->finished_seq_ids.empty());
  s.finish_seq(2);
  o.reset();
  o = s.schedule();
  EXPECT_EQ(std::vector<int64_t>(o->finished_seq_ids.begin(), o->finished_seq_ids.end()),
            (std::vector<int64_t>{2}));
  EXPECT_EQ(s.num_free_device_blocks(), 16);
}

TEST(SchedulerV2, OutputPoolReusesReleasedOutputs) {
  Scheduler s(cfg(16));
  s.add_request(0, 0, toks(0, 4));
  auto a = s.schedule();
  auto b = s.schedule();  // a held -> another object
  EXPECT_NE(a.get(), b.get());
  SchedulerOutput* pa = a.get();
  a.reset();
  auto c = s.schedule();  // b held, a released -> a again
  EXPECT_EQ(c.get(), pa);
}

TEST(SchedulerV2, BlockTablesStayExactAcrossRecycledOutputs) {
  // Rows are rewritten only where a sequence's table changed: compare every step
  // against the tables themselves, through CoW, rollback, preemption and finishing.
  SchedulerConfig c = cfg(24);
  c.enable_prefix_caching = true;
  c.enable_chunked_prefill = true;
  c.max_num_batched_tokens = 24;
  c.max_model_len = 64;
  Scheduler s(c);
  std::mt19937 rng(7);
  int64_t next = 0;
  std::vector<std::shared_ptr<SchedulerOutput>> held;
  for (int step = 0; step < 400; ++step) {
    if (rng() % 3 == 0 && s.num_waiting() < 3) {
      s.add_request(next, next, toks(static_cast<int>(rng() % 3), 3 + rng() % 20));
      ++next;
    }
    auto o = s.schedule();
    s.check_invariants();
    for (int i = 0; i < o->num_seqs; ++i) {
      const auto& bt = s.block_table(o->seq_ids[i]);
      ASSERT_LE(static_cast<int32_t>(bt.size()), o->max_blocks);
      for (int j = 0; j < o->max_blocks; ++j)
        ASSERT_EQ(o->block_tables[i * o->max_blocks + j],
                  j < static_cast<int>(bt.size()) ? bt[j] : 0)
            << "step " << step << " row " << i;
    }
    std::vector<int64_t> ids;
    for (int i = 0; i < o->num_seqs; ++i)
      if (o->do_sample[i]) ids.push_back(o->seq_ids[i]);
    for (int64_t id : ids) {
      const int r = static_cast<int>(rng() % 10);
      if (s.seq_len(id) >= 60 || r == 0) {
        s.finish_seq(id);
      } else if (r == 1 && s.num_running() < 4) {
        s.fork(id, next++);
      } else if (r < 5 && s.seq_len(id) > 4) {
        rollback(s, id, static_cast<int32_t>(1 + rng() % 3));
        append(s, id, {static_cast<int32_t>(rng() % 3)});
      } else {
        append(s, id, std::vector<int32_t>(1 + rng() % 3, static_cast<int32_t>(rng() % 3)));
      }
    }
    s.check_invariants();
    if (rng() % 2) held.push_back(o);  // keep some outputs alive: the pool rotates
    if (held.size() > 2) held.erase(held.begin());
  }
}
