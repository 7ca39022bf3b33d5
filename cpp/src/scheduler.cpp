// Scheduler: the per-step scheduling pass (running -> swapped -> waiting) and
// preemption. Request bookkeeping lives in scheduler_requests.cpp, token
// appends / rollback in scheduler_tokens.cpp, output assembly in
// scheduler_output.cpp.
#include "llmcore/scheduler.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "llmcore/block_hash.h"

namespace llmcore {

void SchedulerConfig::validate() const {
  if (block_size != 8 && block_size != 16 && block_size != 32)
    throw std::invalid_argument("block_size must be 8, 16 or 32");
  if (num_device_blocks <= 0) throw std::invalid_argument("num_device_blocks must be > 0");
  if (num_cpu_blocks < 0) throw std::invalid_argument("num_cpu_blocks must be >= 0");
  if (max_num_seqs <= 0) throw std::invalid_argument("max_num_seqs must be > 0");
  if (max_num_batched_tokens <= 0)
    throw std::invalid_argument("max_num_batched_tokens must be > 0");
  if (max_model_len <= 0) throw std::invalid_argument("max_model_len must be > 0");
  if (!enable_chunked_prefill && max_num_batched_tokens < max_model_len)
    throw std::invalid_argument(
        "max_num_batched_tokens must be >= max_model_len when chunked prefill is off");
  if (!(watermark >= 0.0 && watermark < 1.0))
    throw std::invalid_argument("watermark must be in [0, 1)");
  if (!(delay_factor >= 0.0)) throw std::invalid_argument("delay_factor must be >= 0");
  if (num_micro_batches < 1) throw std::invalid_argument("num_micro_batches must be >= 1");
  if (preemption_mode != PreemptionMode::kRecompute &&
      preemption_mode != PreemptionMode::kSwap)
    throw std::invalid_argument("bad preemption_mode");
}

Scheduler::Scheduler(const SchedulerConfig& config)
    : cfg_((config.validate(), config)),
      alloc_(config.block_size, config.num_device_blocks, config.num_cpu_blocks,
             config.enable_prefix_caching) {
  watermark_blocks_ = static_cast<int>(cfg_.watermark * cfg_.num_device_blocks);
  dev_stamp_.assign(static_cast<size_t>(cfg_.num_device_blocks), 0);
  dev_map_.assign(static_cast<size_t>(cfg_.num_device_blocks), -1);
  cpu_stamp_.assign(static_cast<size_t>(cfg_.num_cpu_blocks), 0);
  cpu_map_.assign(static_cast<size_t>(cfg_.num_cpu_blocks), -1);
  finished_since_schedule_.reserve(1);  // swapped into outputs: data() stays non-null
}

Scheduler::~Scheduler() = default;

// ---------------------------------------------------------------------------
// Prefix-cache helpers

void Scheduler::ensure_hashes(Sequence* s, int32_t num_blocks) {
  auto& h = s->block_hashes;
  const int bs = cfg_.block_size;
  for (int32_t k = static_cast<int32_t>(h.size()); k < num_blocks; ++k) {
    const uint64_t parent = k ? h[k - 1] : kRootBlockHash;
    h.push_back(hash_block_tokens(parent, s->tokens.data() + static_cast<size_t>(k) * bs,
                                  bs, s->req->extra_key));
  }
}

void Scheduler::register_full_blocks(Sequence* s) {
  if (!caching_for(s->req)) return;
  const int bs = cfg_.block_size;
  // only blocks whose tokens are all known (placeholders would enter the hash chain)
  const int32_t known = static_cast<int32_t>(s->tokens.size()) - s->num_placeholders;
  const int32_t full = std::min(s->num_computed, known) / bs;
  if (full <= s->num_registered) return;
  ensure_hashes(s, full);
  for (int32_t k = s->num_registered; k < full; ++k) {
    const uint64_t parent = k ? s->block_hashes[k - 1] : kRootBlockHash;
    alloc_.register_block(s->block_table[k], s->block_hashes[k], parent, s->req->extra_key,
                          s->tokens.data() + static_cast<size_t>(k) * bs);
  }
  s->num_registered = full;
}

// ---------------------------------------------------------------------------
// Scheduling of one request that is (or just became) running.

void Scheduler::commit_tokens(Sequence* s, int32_t n) {
  const int bs = cfg_.block_size;
  const int32_t c = s->num_computed;
  if (c % bs != 0) {
    // Copy-on-write of a shared, partially filled last block.
    int32_t& slot = s->block_table[c / bs];
    if (alloc_.ref_count(slot) > 1) {
      const int32_t dst = alloc_.allocate();
      out_->blocks_to_copy.push_back(slot);
      out_->blocks_to_copy.push_back(dst);
      alloc_.decref(slot);
      slot = dst;
      table_changed(s);
    } else if (cfg_.enable_prefix_caching) {
      // Only after a rollback into it can a partially computed block be cached (a
      // sibling holding it full registered it): its contents are about to change.
      alloc_.uncache_block(slot);
    }
  }
  const size_t need = static_cast<size_t>(blocks_for(c + n));
  while (s->block_table.size() < need) s->block_table.push_back(alloc_.allocate());
  // Decode = the prompt (all it held at admission) is computed, whatever n is.
  const bool prefill = c < s->prefill_end;
  (prefill ? prefills_ : decodes_).push_back(Scheduled{s, c, n});
  s->num_computed = c + n;
  if (cfg_.enable_prefix_caching) register_full_blocks(s);
  if (cfg_.num_micro_batches > 1) set_in_flight(s, true);
}

Scheduler::RunResult Scheduler::schedule_running(Request* r, bool allow_preempt) {
  const int bs = cfg_.block_size;
  plan_.clear();
  cow_scratch_.clear();
  int tokens_left = token_budget_;
  int seqs_left = seq_budget_;
  int need = 0;
  for (Sequence* s : r->seqs) {
    if (s->in_flight) continue;  // its micro-batch has not come back
    const int32_t c = s->num_computed;
    const int32_t rem = static_cast<int32_t>(s->tokens.size()) - c;
    if (rem <= 0) continue;  // waiting for its sampled token
    if (seqs_left <= 0 || tokens_left <= 0) break;
    int32_t n = rem;
    if (n > tokens_left) {
      if (!cfg_.enable_chunked_prefill) continue;
      n = tokens_left;
    }
    need += blocks_for(c + n) - static_cast<int>(s->block_table.size());
    if (c % bs != 0) {
      const int32_t b = s->block_table[c / bs];
      if (alloc_.ref_count(b) > 1) {
        auto it = std::find_if(cow_scratch_.begin(), cow_scratch_.end(),
                               [b](const std::pair<int32_t, int32_t>& p) { return p.first == b; });
        if (it == cow_scratch_.end()) cow_scratch_.emplace_back(b, 1); else ++it->second;
      }
    }
    plan_.push_back(Planned{s, n, 0});
    tokens_left -= n;
    --seqs_left;
  }
  if (plan_.empty()) return RunResult::kSkipped;
  for (const auto& p : cow_scratch_)
    need += std::min(p.second, alloc_.ref_count(p.first) - 1);

  while (!alloc_.can_allocate(need)) {
    if (!allow_preempt) return RunResult::kSkipped;
    Request* victim = pick_victim(r);
    if (victim == nullptr) return RunResult::kSkipped;
    preempt(victim);
    if (victim == r) return RunResult::kSelfPreempted;
  }
  for (const Planned& p : plan_) commit_tokens(p.seq, p.num_tokens);
  token_budget_ = tokens_left;
  seq_budget_ = seqs_left;
  return RunResult::kScheduled;
}

// ---------------------------------------------------------------------------
// Preemption

Request* Scheduler::pick_victim(const Request* r) const {
  // The last running request (lowest priority, latest arrival) that holds no in-flight
  // sequence, never one before r. r itself is the last resort, but not while a request
  // after it is in flight: r waits for that one to come back (and be the victim) instead.
  bool behind_in_flight = false;
  for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
    Request* v = *it;
    if (v == r) return (behind_in_flight || v->num_in_flight) ? nullptr : v;
    if (v->num_in_flight == 0) return v;
    behind_in_flight = true;
  }
  return nullptr;
}

void Scheduler::preempt(Request* victim) {
  auto it = std::find(running_.rbegin(), running_.rend(), victim);
  running_.erase(std::next(it).base());
  num_running_seqs_ -= static_cast<int>(victim->seqs.size());
  preempted_this_step_ = true;
  ++num_preemptions_;
  out_->preempted_request_ids.push_back(victim->request_id);
  for (Sequence* s : victim->seqs) {
    out_->preempted_seq_ids.push_back(s->seq_id);
    s->is_new = true;  // the runner rebuilds its state when it comes back
  }
  if (cfg_.preemption_mode == PreemptionMode::kSwap) {
    ++stamp_;
    int distinct = 0;
    for (Sequence* s : victim->seqs)
      for (int32_t b : s->block_table)
        if (dev_stamp_[b] != stamp_) {
          dev_stamp_[b] = stamp_;
          ++distinct;
        }
    if (distinct <= alloc_.num_free_cpu_blocks()) {
      swap_out(victim);
      return;
    }
  }
  preempt_recompute(victim);
}

void Scheduler::swap_out(Request* r) {
  ++stamp_;
  for (Sequence* s : r->seqs) {
    s->cpu_block_table.clear();
    s->cpu_block_table.reserve(s->block_table.size());
    for (int32_t b : s->block_table) {
      int32_t cb;
      if (dev_stamp_[b] != stamp_) {
        dev_stamp_[b] = stamp_;
        cb = alloc_.allocate_cpu();
        dev_map_[b] = cb;
        out_->blocks_to_swap_out.push_back(b);
        out_->blocks_to_swap_out.push_back(cb);
      } else {
        cb = dev_map_[b];
        alloc_.incref_cpu(cb);
      }
      s->cpu_block_table.push_back(cb);
    }
    for (auto it = s->block_table.rbegin(); it != s->block_table.rend(); ++it)
      alloc_.decref(*it);
    s->block_table.clear();
    table_changed(s);
  }
  r->state = RequestState::kSwapped;
  swapped_.insert(r);
}

void Scheduler::preempt_recompute(Request* r) {
  for (Sequence* s : r->seqs) {
    free_seq_blocks(s);
    s->num_computed = 0;
    s->prefill_end = 0;
    s->num_registered = 0;  // block_hashes stay valid: tokens never change
  }
  r->state = RequestState::kWaiting;
  r->front = true;
  waiting_.insert(r);
}

void Scheduler::free_seq_blocks(Sequence* s) {
  // Reverse order: the tail of a sequence becomes the first eviction candidate.
  for (auto it = s->block_table.rbegin(); it != s->block_table.rend(); ++it)
    alloc_.decref(*it);
  s->block_table.clear();
  table_changed(s);
  for (int32_t cb : s->cpu_block_table) alloc_.decref_cpu(cb);
  s->cpu_block_table.clear();
}

void Scheduler::insert_running(Request* r) {
  auto pos = std::upper_bound(running_.begin(), running_.end(), r, RunOrder());
  running_.insert(pos, r);
}

// ---------------------------------------------------------------------------
// Swap-in and admission

bool Scheduler::try_swap_in(Request* r) {
  if (num_running_seqs_ + static_cast<int>(r->seqs.size()) > cfg_.max_num_seqs) return false;
  ++stamp_;
  int need = 0;
  for (Sequence* s : r->seqs)
    for (int32_t cb : s->cpu_block_table)
      if (cpu_stamp_[cb] != stamp_) {
        cpu_stamp_[cb] = stamp_;
        ++need;
      }
  if (!alloc_.can_allocate(need, watermark_blocks_)) return false;
  swapped_.erase(r);
  ++stamp_;
  for (Sequence* s : r->seqs) {
    s->block_table.clear();
    table_changed(s);
    s->block_table.reserve(s->cpu_block_table.size());
    for (int32_t cb : s->cpu_block_table) {
      int32_t b;
      if (cpu_stamp_[cb] != stamp_) {
        cpu_stamp_[cb] = stamp_;
        b = alloc_.allocate();
        cpu_map_[cb] = b;
        out_->blocks_to_swap_in.push_back(cb);
        out_->blocks_to_swap_in.push_back(b);
      } else {
        b = cpu_map_[cb];
        alloc_.incref(b);
      }
      s->block_table.push_back(b);
    }
    for (int32_t cb : s->cpu_block_table) alloc_.decref_cpu(cb);
    s->cpu_block_table.clear();
    s->num_registered = 0;
    if (cfg_.enable_prefix_caching) register_full_blocks(s);
  }
  r->state = RequestState::kRunning;
  insert_running(r);
  num_running_seqs_ += static_cast<int>(r->seqs.size());
  return true;
}

bool Scheduler::try_admit(Request* r) {
  const int bs = cfg_.block_size;
  const int nseq = static_cast<int>(r->seqs.size());
  if (num_running_seqs_ + nseq > cfg_.max_num_seqs) return false;
  // a request of more sequences than a micro-batch's share (a preempted n > 1 group) is
  // admitted into a micro-batch of its own rather than never
  if (nseq > seq_budget_ && seq_budget_ != step_seq_budget_) return false;
  plan_.clear();
  hit_scratch_.clear();
  const bool cache = caching_for(r);
  int tokens_left = token_budget_;
  int need = 0;
  int evictable_hits = 0;
  for (Sequence* s : r->seqs) {
    const int32_t len = static_cast<int32_t>(s->tokens.size());
    int32_t hits = 0;
    if (cache) {
      const int32_t max_hit = (len - 1) / bs;  // always compute >= 1 token
      ensure_hashes(s, max_hit);
      for (int32_t k = 0; k < max_hit; ++k) {
        const uint64_t parent = k ? s->block_hashes[k - 1] : kRootBlockHash;
        const int32_t b = alloc_.lookup(s->block_hashes[k], parent, r->extra_key,
                                        s->tokens.data() + static_cast<size_t>(k) * bs);
        if (b < 0) break;
        if (alloc_.ref_count(b) == 0) ++evictable_hits;
        hit_scratch_.push_back(b);
        ++hits;
      }
    }
    const int32_t hit_tokens = hits * bs;
    int32_t n = len - hit_tokens;
    if (n > tokens_left) {
      if (!cfg_.enable_chunked_prefill) return false;
      n = tokens_left;
    }
    if (n <= 0) return false;
    need += blocks_for(hit_tokens + n) - hits;
    plan_.push_back(Planned{s, n, hits});
    tokens_left -= n;
  }
  // With nothing running or swapped no one could ever free blocks for it, so
  // the watermark must not block the only request left.
  const bool idle = running_.empty() && swapped_.empty();
  if (!alloc_.can_allocate(need + evictable_hits, idle ? 0 : watermark_blocks_)) return false;

  waiting_.erase(r);
  r->front = false;
  r->state = RequestState::kRunning;
  insert_running(r);
  num_running_seqs_ += nseq;
  // Take the hit blocks first so allocations below cannot evict them.
  size_t h = 0;
  for (const Planned& p : plan_) {
    Sequence* s = p.seq;
    s->block_table.clear();
    table_changed(s);
    for (int32_t k = 0; k < p.num_hit_blocks; ++k) {
      const int32_t b = hit_scratch_[h++];
      alloc_.incref(b);
      s->block_table.push_back(b);
    }
    s->num_computed = p.num_hit_blocks * bs;
    s->num_registered = p.num_hit_blocks;
    s->prefill_end = static_cast<int32_t>(s->tokens.size());
    if (cache)
      alloc_.record_query(static_cast<int64_t>(s->tokens.size()),
                          static_cast<int64_t>(p.num_hit_blocks) * bs);
  }
  for (const Planned& p : plan_) commit_tokens(p.seq, p.num_tokens);
  token_budget_ = tokens_left;
  seq_budget_ -= nseq;
  return true;
}

// ---------------------------------------------------------------------------

bool Scheduler::passed_delay(double now) {
  if (prev_step_admitted_) last_prompt_latency_ = now - prev_schedule_time_;
  prev_schedule_time_ = now;
  prev_step_admitted_ = false;
  if (cfg_.delay_factor <= 0.0 || waiting_.empty() || running_.empty()) return true;
  double earliest = (*waiting_.begin())->arrival;
  for (const Request* r : waiting_) earliest = std::min(earliest, r->arrival);
  return now - earliest > cfg_.delay_factor * last_prompt_latency_;
}

std::shared_ptr<SchedulerOutput> Scheduler::schedule(double now) {
  const bool admit_prompts = passed_delay(now);  // before step 1 changes running_
  std::shared_ptr<SchedulerOutput> result = acquire_output();
  out_ = result.get();
  out_->begin_step();
  out_->finished_seq_ids.swap(finished_since_schedule_);
  finished_since_schedule_.clear();
  prefills_.clear();
  decodes_.clear();
  token_budget_ = cfg_.max_num_batched_tokens;
  seq_budget_ = cfg_.max_num_seqs;
  if (cfg_.num_micro_batches > 1) {
    // About 1/M of the live sequences (running, and one per waiting or swapped request),
    // so that M micro-batches share them evenly. The token budget stays whole: it bounds
    // one forward's activations, and each micro-batch is one forward.
    const int m = cfg_.num_micro_batches;
    const int live = std::min(cfg_.max_num_seqs,
                              num_running_seqs_ + static_cast<int>(waiting_.size()) +
                                  static_cast<int>(swapped_.size()));
    seq_budget_ = std::max(1, (live + m - 1) / m);
  }
  step_seq_budget_ = seq_budget_;
  preempted_this_step_ = false;

  // 1. Running requests (decodes and continuing prefill chunks) first.
  size_t i = 0;
  while (i < running_.size()) {
    if (token_budget_ <= 0 || seq_budget_ <= 0) break;
    if (schedule_running(running_[i], /*allow_preempt=*/true) == RunResult::kSelfPreempted)
      continue;  // it was the last one
    ++i;
  }
  // 2. Swapped requests come back before any new prefill is admitted.
  if (!preempted_this_step_) {
    while (!swapped_.empty()) {
      Request* r = *swapped_.begin();
      if (!try_swap_in(r)) break;
      schedule_running(r, /*allow_preempt=*/false);
    }
  }
  // 3. New (or recompute-preempted) prefills.
  if (!preempted_this_step_ && swapped_.empty() && admit_prompts) {
    while (!waiting_.empty() && token_budget_ > 0 && seq_budget_ > 0) {
      if (!try_admit(*waiting_.begin())) break;
      prev_step_admitted_ = true;
    }
  }
  build_output(*out_);
  out_ = nullptr;
  return result;
}

std::shared_ptr<SchedulerOutput> Scheduler::acquire_output() {
  // Prefer the output handed out last (warm in cache), then any other released one.
  if (last_pooled_ >= 0 && output_pool_[last_pooled_].use_count() == 1)
    return output_pool_[last_pooled_];
  for (size_t i = 0; i < output_pool_.size(); ++i)
    if (output_pool_[i].use_count() == 1) {
      last_pooled_ = static_cast<int>(i);
      return output_pool_[i];
    }
  auto fresh = std::make_shared<SchedulerOutput>();
  if (output_pool_.size() < kOutputPoolSize) {
    last_pooled_ = static_cast<int>(output_pool_.size());
    output_pool_.push_back(fresh);
  }
  return fresh;
}

}  // namespace llmcore
