// SchedulerConfig::delay_factor (--scheduler-delay-factor), driven by fake clocks.
#include <gtest/gtest.h>

#include <numeric>
#include <stdexcept>
#include <vector>

#include "llmcore/scheduler.h"

using namespace llmcore;

namespace {

SchedulerConfig delay_cfg(double delay_factor) {
  SchedulerConfig c;
  c.block_size = 16;
  c.num_device_blocks = 512;
  c.max_model_len = 256;
  c.max_num_batched_tokens = 256;
  c.max_num_seqs = 64;
  c.watermark = 0.0;
  c.delay_factor = delay_factor;
  return c;
}

std::vector<int32_t> prompt(int n) {
  std::vector<int32_t> t(n);
  std::iota(t.begin(), t.end(), 1);
  return t;
}

// One step at time `now`: schedule, then give every sampled seq one token.
std::shared_ptr<SchedulerOutput> step(Scheduler& s, double now) {
  auto out = s.schedule(now);
  s.check_invariants();
  std::vector<int64_t> ids;
  std::vector<int32_t> tk;
  for (int i = 0; i < out->num_seqs; ++i)
    if (out->do_sample[i]) {
      ids.push_back(out->seq_ids[i]);
      tk.push_back(7);
    }
  s.update(ids, tk);
  return out;
}

struct Counts {
  int prefill_steps = 0;   // steps that admitted at least one prompt
  int admitted = 0;        // prompts admitted in all
  int steps = 0;
  int decode_steps = 0;    // steps that ran the long-lived request's decode
};

// A long request decodes throughout; one new 8-token prompt arrives at every step
// (1 time unit apart, arrival = that step's time) for `arrivals` steps, then the
// loop runs until every prompt was admitted.
Counts run_arrivals(double delay_factor, int arrivals) {
  Scheduler s(delay_cfg(delay_factor));
  s.add_request(0, 0, prompt(8), /*arrival_time=*/0.0);
  double now = 0.0;
  step(s, now);  // request 0's prefill: the scheduler is idle, so no delay applies
  Counts c;
  for (int t = 1; t < 200 && (t <= arrivals || s.num_waiting() > 0); ++t) {
    now = t;
    if (t <= arrivals) s.add_request(t, t, prompt(8), /*arrival_time=*/now);
    auto out = step(s, now);
    ++c.steps;
    int new_prompts = 0;
    for (int i = 0; i < out->num_prefill_seqs; ++i) new_prompts += out->is_new[i];
    if (new_prompts > 0) ++c.prefill_steps;
    c.admitted += new_prompts;
    for (int i = out->num_prefill_seqs; i < out->num_seqs; ++i)
      if (out->seq_ids[i] == 0) ++c.decode_steps;
  }
  return c;
}

}  // namespace

TEST(SchedulerDelay, Validation) {
  SchedulerConfig c = delay_cfg(-0.5);
  EXPECT_THROW(c.validate(), std::invalid_argument);
  c.delay_factor = 0.0;
  EXPECT_NO_THROW(c.validate());
}

TEST(SchedulerDelay, ZeroFactorAdmitsEveryArrivalAtOnce) {
  const Counts c = run_arrivals(0.0, 12);
  EXPECT_EQ(c.admitted, 12);
  EXPECT_EQ(c.prefill_steps, 12);  // one prefill step per arrival
}

TEST(SchedulerDelay, PositiveFactorBatchesArrivalsIntoFewerPrefills) {
  const Counts eager = run_arrivals(0.0, 12);
  const Counts delayed = run_arrivals(3.0, 12);
  EXPECT_EQ(delayed.admitted, 12);  // every prompt is admitted in the end
  EXPECT_LT(delayed.prefill_steps, eager.prefill_steps);
  // A prompt step lasts 1 unit, so a batch is admitted once its oldest prompt has waited
  // more than 3 units: arrivals t..t+3 go together at t+4 (the first one with the
  // decode-only history, whose latency is 0, goes at once).
  EXPECT_LE(delayed.prefill_steps, 4);
  // the running request kept decoding at every step meanwhile
  EXPECT_EQ(delayed.decode_steps, delayed.steps);
  EXPECT_EQ(eager.decode_steps, eager.steps);
}

TEST(SchedulerDelay, IdleSchedulerAdmitsAtOnce) {
  Scheduler s(delay_cfg(100.0));
  s.add_request(0, 0, prompt(8), 0.0);
  auto out = step(s, 0.0);
  EXPECT_EQ(out->num_prefill_seqs, 1);
  // a prompt step at t=0, measured at t=10: latency 10, so a new arrival waits > 1000
  s.add_request(1, 1, prompt(8), 10.0);
  out = step(s, 10.0);
  EXPECT_EQ(out->num_prefill_seqs, 0);
  out = step(s, 500.0);
  EXPECT_EQ(out->num_prefill_seqs, 0);
  EXPECT_EQ(s.num_waiting(), 1);
  // nothing running any more: the waiting prompt goes at once
  s.finish_seq(0);
  out = step(s, 501.0);
  EXPECT_EQ(out->num_prefill_seqs, 1);
  EXPECT_EQ(s.num_waiting(), 0);
}

TEST(SchedulerDelay, WaitIsMeasuredFromTheOldestArrival) {
  Scheduler s(delay_cfg(2.0));
  s.add_request(0, 0, prompt(8), 0.0);
  step(s, 0.0);                      // prompt step at t=0
  step(s, 1.0);                      // latency of that prompt step: 1 -> delay 2
  s.add_request(1, 1, prompt(8), 1.5);
  EXPECT_EQ(step(s, 2.0)->num_prefill_seqs, 0);   // waited 0.5
  s.add_request(2, 2, prompt(8), 3.0);
  EXPECT_EQ(step(s, 3.5)->num_prefill_seqs, 0);   // oldest waited 2.0, not > 2.0
  auto out = step(s, 3.6);                        // oldest waited 2.1: both go together
  EXPECT_EQ(out->num_prefill_seqs, 2);
}
