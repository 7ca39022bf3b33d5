// Micro-batches (pipeline parallelism): in-flight sequences are skipped and never
// preempted, the sequence budget is split between the micro-batches, and aborts / finishes
// of in-flight sequences leak no block.
#include <gtest/gtest.h>

#include <algorithm>
#include <deque>
#include <numeric>
#include <set>
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

SchedulerConfig cfg(int blocks, int micro_batches, int bs = 8) {
  SchedulerConfig c;
  c.block_size = bs;
  c.num_device_blocks = blocks;
  c.max_model_len = 128;
  c.max_num_batched_tokens = 128;
  c.watermark = 0.0;
  c.num_micro_batches = micro_batches;
  return c;
}

std::vector<int64_t> ids_of(const SchedulerOutput& o) {
  return std::vector<int64_t>(o.seq_ids.begin(), o.seq_ids.begin() + o.num_seqs);
}

std::vector<int64_t> sampled(const SchedulerOutput& o) {
  std::vector<int64_t> v;
  for (int i = 0; i < o.num_seqs; ++i)
    if (o.do_sample[i]) v.push_back(o.seq_ids[i]);
  return v;
}

// A micro-batch coming back: its sequences leave flight, the sampled live ones get a token.
void complete(Scheduler& s, const std::vector<int64_t>& ids,
              const std::vector<int64_t>& sample_ids) {
  s.clear_in_flight(ids.data(), ids.size());
  std::vector<int64_t> live;
  for (int64_t id : sample_ids)
    if (s.has_seq(id)) live.push_back(id);
  std::vector<int32_t> tk(live.size(), 7);
  s.update(live, tk);
  s.check_invariants();
}

bool disjoint(std::vector<int64_t> a, std::vector<int64_t> b) {
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  std::vector<int64_t> both;
  std::set_intersection(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(both));
  return both.empty();
}

}  // namespace

TEST(SchedulerMicroBatches, ConfigValidation) {
  SchedulerConfig c = cfg(8, 0);
  EXPECT_THROW(c.validate(), std::invalid_argument);
  c.num_micro_batches = 1;
  EXPECT_NO_THROW(c.validate());
}

TEST(SchedulerMicroBatches, TwoDisjointBalancedMicroBatchesThenNothing) {
  Scheduler s(cfg(64, 2));
  for (int r = 0; r < 5; ++r) s.add_request(r, r, toks(10 * r, 5 + r));
  auto a = s.schedule();
  s.check_invariants();
  auto b = s.schedule();
  s.check_invariants();
  EXPECT_EQ(a->num_seqs, 3);  // ceil(5 / 2)
  EXPECT_EQ(b->num_seqs, 2);
  EXPECT_TRUE(disjoint(ids_of(*a), ids_of(*b)));
  EXPECT_EQ(s.num_in_flight(), 5);
  for (int64_t id : ids_of(*a)) EXPECT_TRUE(s.is_in_flight(id));
  auto c = s.schedule();  // everything is in flight
  EXPECT_EQ(c->num_seqs, 0);
  // A comes back: its sequences decode in the next micro-batch, B's are still out
  complete(s, ids_of(*a), sampled(*a));
  EXPECT_EQ(s.num_in_flight(), 2);
  auto a2 = s.schedule();
  EXPECT_EQ(ids_of(*a2), ids_of(*a));
  EXPECT_EQ(a2->num_prefill_seqs, 0);
  complete(s, ids_of(*b), sampled(*b));
  complete(s, ids_of(*a2), sampled(*a2));
  EXPECT_EQ(s.num_in_flight(), 0);
}

TEST(SchedulerMicroBatches, OneMicroBatchMarksNothingAndTakesAll) {
  Scheduler s(cfg(64, 1));
  for (int r = 0; r < 5; ++r) s.add_request(r, r, toks(10 * r, 5 + r));
  auto a = s.schedule();
  EXPECT_EQ(a->num_seqs, 5);
  EXPECT_EQ(s.num_in_flight(), 0);
  for (int r = 0; r < 5; ++r) EXPECT_FALSE(s.is_in_flight(r));
  s.check_invariants();
}

TEST(SchedulerMicroBatches, BudgetCountsWaitingRequestsAndMaxNumSeqs) {
  SchedulerConfig c = cfg(64, 2);
  c.max_num_seqs = 4;
  Scheduler s(c);
  for (int r = 0; r < 9; ++r) s.add_request(r, r, toks(r, 4));
  auto a = s.schedule();
  auto b = s.schedule();
  EXPECT_EQ(a->num_seqs, 2);  // ceil(min(4, 9) / 2)
  EXPECT_EQ(b->num_seqs, 2);
  EXPECT_EQ(s.num_waiting(), 5);
  // a new arrival gets into the next micro-batch beside the returning ones (not starved)
  complete(s, ids_of(*a), sampled(*a));
  s.finish_seq(ids_of(*a)[0]);
  auto a2 = s.schedule();
  EXPECT_EQ(a2->num_seqs, 2);
  EXPECT_EQ(a2->num_prefill_seqs, 1);
  s.check_invariants();
}

TEST(SchedulerMicroBatches, ChunkedPrefillWaitsForItsChunk) {
  SchedulerConfig c = cfg(64, 2);
  c.enable_chunked_prefill = true;
  c.max_num_batched_tokens = 16;
  Scheduler s(c);
  s.add_request(0, 0, toks(0, 40));
  auto a = s.schedule();
  ASSERT_EQ(a->num_seqs, 1);
  EXPECT_EQ(a->num_tokens[0], 16);
  EXPECT_FALSE(a->do_sample[0]);
  // its next chunk must not run before this one came back
  EXPECT_EQ(s.schedule()->num_seqs, 0);
  complete(s, ids_of(*a), sampled(*a));
  auto b = s.schedule();
  ASSERT_EQ(b->num_seqs, 1);
  EXPECT_EQ(b->context_lens[0], 16);
  s.check_invariants();
}

TEST(SchedulerMicroBatches, InFlightRequestsAreNeverPreempted) {
  // 4 blocks of 8: two sequences of 15 tokens fill the pool
  SchedulerConfig c = cfg(4, 2);
  c.max_num_seqs = 2;
  Scheduler s(c);
  s.add_request(0, 0, toks(0, 15), 0.0);
  s.add_request(1, 1, toks(100, 15), 1.0);
  auto a = s.schedule();  // request 0
  auto b = s.schedule();  // request 1
  ASSERT_EQ(ids_of(*a), (std::vector<int64_t>{0}));
  ASSERT_EQ(ids_of(*b), (std::vector<int64_t>{1}));
  EXPECT_EQ(s.num_free_device_blocks(), 0);
  complete(s, ids_of(*a), sampled(*a));      // 16 tokens: fits its 2 blocks
  auto a2 = s.schedule();
  ASSERT_EQ(a2->num_seqs, 1);
  complete(s, ids_of(*a2), sampled(*a2));    // 17 tokens: needs a 3rd block
  // the only other request (1) is in flight: request 0 waits instead of preempting it
  auto a3 = s.schedule();
  EXPECT_EQ(a3->num_seqs, 0);
  EXPECT_TRUE(a3->preempted_request_ids.empty());
  EXPECT_EQ(s.num_preemptions(), 0);
  EXPECT_TRUE(s.is_in_flight(1));
  EXPECT_EQ(s.num_computed(1), 15);
  // once 1 is back, it is the victim (later arrival)
  complete(s, ids_of(*b), sampled(*b));
  auto a4 = s.schedule();
  EXPECT_EQ(a4->preempted_request_ids, (std::vector<int64_t>{1}));
  EXPECT_EQ(ids_of(*a4), (std::vector<int64_t>{0}));
  s.check_invariants();
}

TEST(SchedulerMicroBatches, InFlightSelfIsNotPreemptedEither) {
  // request 0 (two sequences after a fork) has one sequence in flight and one that needs a
  // block: with no other victim it must wait, not preempt itself
  SchedulerConfig c = cfg(3, 2);
  c.max_num_seqs = 1;  // one sequence per micro-batch
  Scheduler s(c);
  s.add_request(0, 0, toks(0, 8));
  auto a = s.schedule();
  s.fork(0, 1);  // the child is in flight with its parent
  EXPECT_TRUE(s.is_in_flight(1));
  EXPECT_EQ(s.num_in_flight(), 2);
  complete(s, {0, 1}, {0, 1});  // 9 tokens each: each needs its own 2nd block
  auto x = s.schedule();        // seq 0 (its 2nd block)
  ASSERT_EQ(ids_of(*x), (std::vector<int64_t>{0}));
  auto y = s.schedule();        // seq 1: 1 block left, its own 2nd block fits
  ASSERT_EQ(ids_of(*y), (std::vector<int64_t>{1}));
  EXPECT_EQ(s.num_free_device_blocks(), 0);
  complete(s, ids_of(*x), sampled(*x));
  // seq 0 grows past its 2nd block (16 tokens)
  for (int i = 0; i < 7; ++i) s.update(std::vector<int64_t>{0}, std::vector<int32_t>{7});
  ASSERT_EQ(s.seq_len(0), 17);
  // seq 0 needs a 3rd block; its request holds seq 1 in flight: nothing is preempted
  auto z = s.schedule();
  EXPECT_EQ(z->num_seqs, 0);
  EXPECT_EQ(s.num_preemptions(), 0);
  EXPECT_EQ(s.num_waiting(), 0);
  s.check_invariants();
}

TEST(SchedulerMicroBatches, AbortWhileInFlightFreesBlocksAtOnce) {
  Scheduler s(cfg(16, 2));
  s.add_request(0, 0, toks(0, 20));
  s.add_request(1, 1, toks(50, 20));
  auto a = s.schedule();
  auto b = s.schedule();
  const int free_before = s.num_free_device_blocks();
  EXPECT_EQ(free_before, 16 - 6);
  s.abort_request(0);  // in flight in a
  EXPECT_EQ(s.num_free_device_blocks(), free_before + 3);
  EXPECT_EQ(s.num_in_flight(), 1);
  s.check_invariants();
  // a comes back: its stale id is skipped
  complete(s, ids_of(*a), sampled(*a));
  EXPECT_FALSE(s.has_seq(0));
  // the aborted seq is reported finished to the runner by the next step
  auto c = s.schedule();
  EXPECT_EQ(std::vector<int64_t>(c->finished_seq_ids.begin(), c->finished_seq_ids.end()),
            (std::vector<int64_t>{0}));
  complete(s, ids_of(*b), sampled(*b));
  s.finish_seq(1);
  EXPECT_EQ(s.num_in_flight(), 0);
  EXPECT_EQ(s.num_free_device_blocks(), 16);
  EXPECT_FALSE(s.has_unfinished());
  s.check_invariants();
}

TEST(SchedulerMicroBatches, FinishWhileInFlightAndForkCounts) {
  Scheduler s(cfg(16, 2));
  s.add_request(0, 0, toks(0, 9));
  s.schedule();
  s.fork(0, 1);
  s.fork(0, 2);
  EXPECT_EQ(s.num_in_flight(), 3);
  s.finish_seq(2);  // e.g. a length stop known at launch
  EXPECT_EQ(s.num_in_flight(), 2);
  s.check_invariants();
  complete(s, {0, 1, 2}, {0, 1, 2});
  EXPECT_EQ(s.num_in_flight(), 0);
  s.abort_request(0);
  EXPECT_EQ(s.num_free_device_blocks(), 16);
  s.check_invariants();
}

TEST(SchedulerMicroBatches, MarkInFlightValidates) {
  Scheduler s(cfg(16, 1));
  s.add_request(0, 0, toks(0, 9));
  s.add_request(1, 1, toks(20, 9));
  const int64_t waiting[] = {0};
  EXPECT_THROW(s.mark_in_flight(waiting, 1), std::invalid_argument);  // not running
  s.schedule();
  const int64_t unknown[] = {0, 5};
  EXPECT_THROW(s.mark_in_flight(unknown, 2), std::invalid_argument);
  const int64_t twice[] = {0, 0};
  EXPECT_THROW(s.mark_in_flight(twice, 2), std::invalid_argument);
  EXPECT_EQ(s.num_in_flight(), 0);  // nothing changed on an error
  const int64_t both[] = {0, 1};
  s.mark_in_flight(both, 2);
  EXPECT_EQ(s.num_in_flight(), 2);
  EXPECT_THROW(s.mark_in_flight(both, 1), std::invalid_argument);  // already in flight
  s.update(std::vector<int64_t>{0, 1}, std::vector<int32_t>{7, 7});
  EXPECT_EQ(s.schedule()->num_seqs, 0);  // marked by hand: skipped with one micro-batch too
  const int64_t gone_and_one[] = {99, 1};
  s.clear_in_flight(gone_and_one, 2);
  EXPECT_EQ(s.num_in_flight(), 1);
  EXPECT_EQ(ids_of(*s.schedule()), (std::vector<int64_t>{1}));
  s.check_invariants();
}

TEST(SchedulerMicroBatches, PreemptedGroupLargerThanShareIsAdmitted) {
  // Request 0 (three sequences, low priority) is preempted by request 1's growth; once 1
  // is done the group comes back although the per-micro-batch share is then 1 sequence.
  SchedulerConfig c = cfg(10, 2);
  Scheduler s(c);
  s.add_request(0, 0, toks(0, 7), 0.0, /*priority=*/1);
  auto a = s.schedule();
  s.fork(0, 1);
  s.fork(0, 2);
  complete(s, {0, 1, 2}, {0, 1, 2});
  s.add_request(1, 3, toks(50, 7), 1.0);
  auto group_waits = [&] {
    return s.has_seq(0) && s.has_seq(1) && s.has_seq(2) && s.block_table(0).empty();
  };
  // the engine's loop: up to 2 micro-batches in flight, complete the oldest
  std::deque<std::shared_ptr<SchedulerOutput>> flight;
  bool group_waited = false;
  for (int guard = 0; s.has_unfinished() && guard < 400; ++guard) {
    while (flight.size() < 2) {
      auto o = s.schedule();
      s.check_invariants();
      if (o->num_seqs == 0) break;
      flight.push_back(o);
    }
    group_waited = group_waited || group_waits();
    if (flight.empty()) continue;
    auto o = flight.front();
    flight.pop_front();
    complete(s, ids_of(*o), sampled(*o));
    for (int64_t id : ids_of(*o))
      if (s.has_seq(id) && s.seq_len(id) >= 24) s.finish_seq(id);
  }
  EXPECT_TRUE(group_waited);
  EXPECT_GT(s.num_preemptions(), 0);
  EXPECT_FALSE(s.has_unfinished());
  EXPECT_EQ(s.num_free_device_blocks(), 10);
  s.check_invariants();
}

TEST(SchedulerMicroBatches, RandomizedInvariantsAndNoLeaks) {
  for (int mode = 0; mode < 12; ++mode) {
    const int m = 2 + mode % 3;
    SchedulerConfig c = cfg(14, m);
    c.max_model_len = 64;
    c.max_num_batched_tokens = (mode & 1) ? 24 : 64;
    c.enable_chunked_prefill = mode & 1;
    c.enable_prefix_caching = (mode / 2) & 1;
    c.preemption_mode = (mode / 4) & 1 ? PreemptionMode::kSwap : PreemptionMode::kRecompute;
    c.num_cpu_blocks = 6;
    c.max_num_seqs = 6;
    Scheduler s(c);
    uint64_t rng = 777 + mode;
    auto rnd = [&](int n) {
      rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
      return static_cast<int>((rng >> 33) % static_cast<uint64_t>(n));
    };
    struct MB {
      std::vector<int64_t> ids, sample;
    };
    std::deque<MB> flight;
    int64_t next_id = 0;
    for (int it = 0; it < 500; ++it) {
      const int a = rnd(12);
      if (a < 3) {
        const int len = 1 + rnd(40);
        std::vector<int32_t> p(len);
        for (auto& t : p) t = rnd(3);
        s.add_request(next_id, next_id, p, it, rnd(2));
        ++next_id;
      } else if (a < 7 && static_cast<int>(flight.size()) < m) {
        auto o = s.schedule();
        std::set<int64_t> out_now;
        for (const MB& mb : flight) out_now.insert(mb.ids.begin(), mb.ids.end());
        for (int64_t id : ids_of(*o)) {
          ASSERT_EQ(out_now.count(id), 0u) << "seq " << id << " scheduled twice";
          ASSERT_TRUE(s.is_in_flight(id));
        }
        for (int64_t v : std::vector<int64_t>(o->preempted_seq_ids.begin(),
                                              o->preempted_seq_ids.end()))
          ASSERT_EQ(out_now.count(v), 0u) << "in-flight seq " << v << " preempted";
        MB mb{ids_of(*o), sampled(*o)};
        if (!mb.sample.empty() && rnd(4) == 0 && s.has_seq(mb.sample[0])) {
          // an n > 1 fork at launch: the child is in flight with its parent
          const int64_t child = 1000000 + it;
          s.fork(mb.sample[0], child);
          mb.ids.push_back(child);
          mb.sample.push_back(child);
        }
        flight.push_back(mb);
      } else if (a < 10 && !flight.empty()) {
        MB mb = flight.front();
        flight.pop_front();
        complete(s, mb.ids, mb.sample);
        for (int64_t id : mb.sample)
          if (s.has_seq(id) && s.seq_len(id) > 40 + rnd(10)) s.finish_seq(id);
      } else if (next_id > 0) {
        s.abort_request(rnd(static_cast<int>(next_id)));  // maybe in flight
      }
      s.check_invariants();
    }
    while (!flight.empty()) {
      complete(s, flight.front().ids, flight.front().sample);
      flight.pop_front();
    }
    EXPECT_EQ(s.num_in_flight(), 0);
    for (int64_t r = 0; r < next_id; ++r) s.abort_request(r);
    EXPECT_FALSE(s.has_unfinished());
    EXPECT_DOUBLE_EQ(s.device_usage(), 0.0);
    EXPECT_EQ(s.num_free_device_blocks(), 14);
    EXPECT_EQ(s.num_free_cpu_blocks(), 6);
    s.check_invariants();
  }
}
