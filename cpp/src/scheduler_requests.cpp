// Scheduler: request / sequence bookkeeping, queries and invariant checks.
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "llmcore/scheduler.h"

namespace llmcore {

namespace {
[[noreturn]] void violation(const std::string& what) {
  throw std::runtime_error("scheduler invariant violated: " + what);
}
}  // namespace

Sequence* Scheduler::find_seq(int64_t seq_id) const {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end())
    throw std::invalid_argument("unknown seq_id " + std::to_string(seq_id));
  return it->second.get();
}

void Scheduler::add_request(int64_t request_id, int64_t seq_id, const int32_t* prompt,
                            size_t prompt_len, double arrival_time, int32_t priority,
                            uint64_t extra_hash_key, bool allow_prefix_cache) {
  if (requests_.count(request_id))
    throw std::invalid_argument("duplicate request_id " + std::to_string(request_id));
  if (seqs_.count(seq_id))
    throw std::invalid_argument("duplicate seq_id " + std::to_string(seq_id));
  if (prompt_len == 0) throw std::invalid_argument("empty prompt");
  if (prompt_len > static_cast<size_t>(cfg_.max_model_len))
    throw std::invalid_argument("prompt length " + std::to_string(prompt_len) +
                                " exceeds max_model_len " +
                                std::to_string(cfg_.max_model_len));
  if (blocks_for(static_cast<int32_t>(prompt_len)) > cfg_.num_device_blocks)
    throw std::invalid_argument("prompt needs more KV blocks than the device pool holds");
  auto req = std::make_unique<Request>();
  req->request_id = request_id;
  req->arrival = arrival_time;
  req->priority = priority;
  req->extra_key = extra_hash_key;
  req->allow_prefix_cache = allow_prefix_cache;
  req->seqno = next_seqno_++;
  req->state = RequestState::kWaiting;
  auto seq = std::make_unique<Sequence>();
  seq->seq_id = seq_id;
  seq->req = req.get();
  seq->tokens.reserve(prompt_len + 16);
  seq->tokens.assign(prompt, prompt + prompt_len);
  table_changed(seq.get());
  req->seqs.push_back(seq.get());
  Request* r = req.get();
  seqs_.emplace(seq_id, std::move(seq));
  requests_.emplace(request_id, std::move(req));
  waiting_.insert(r);
}

void Scheduler::fork(int64_t parent_seq_id, int64_t child_seq_id) {
  Sequence* p = find_seq(parent_seq_id);
  if (seqs_.count(child_seq_id))
    throw std::invalid_argument("duplicate seq_id " + std::to_string(child_seq_id));
  if (p->req->state != RequestState::kRunning)
    throw std::invalid_argument("fork: parent sequence is not running");
  auto child = std::make_unique<Sequence>();
  Sequence* c = child.get();
  c->seq_id = child_seq_id;
  c->req = p->req;
  c->tokens.reserve(p->tokens.capacity());
  c->tokens = p->tokens;
  c->num_computed = p->num_computed;
  c->prefill_end = p->prefill_end;
  c->num_registered = p->num_registered;
  c->block_table = p->block_table;
  c->block_hashes = p->block_hashes;
  table_changed(c);
  for (int32_t b : c->block_table) alloc_.incref(b);
  p->req->seqs.push_back(c);
  ++num_running_seqs_;
  seqs_.emplace(child_seq_id, std::move(child));
  // forked from a sample of a launched step: the child's first token comes with it
  if (p->in_flight) set_in_flight(c, true);
}

void Scheduler::set_in_flight(Sequence* s, bool on) {
  if (s->in_flight == on) return;
  s->in_flight = on;
  const int d = on ? 1 : -1;
  s->req->num_in_flight += d;
  num_in_flight_ += d;
}

void Scheduler::mark_in_flight(const int64_t* seq_ids, size_t n) {
  resolve_seqs(seq_ids, n);
  const uint32_t stamp = ++op_stamp_;
  for (size_t i = 0; i < n; ++i) {
    Sequence* s = update_scratch_[i];
    const std::string sid = "mark_in_flight: seq " + std::to_string(seq_ids[i]);
    if (s->op_stamp == stamp) throw std::invalid_argument(sid + " given twice");
    s->op_stamp = stamp;
    if (s->in_flight) throw std::invalid_argument(sid + " is in flight already");
    if (s->req->state != RequestState::kRunning)
      throw std::invalid_argument(sid + " is not running");
  }
  for (size_t i = 0; i < n; ++i) set_in_flight(update_scratch_[i], true);
}

void Scheduler::clear_in_flight(const int64_t* seq_ids, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    auto it = seqs_.find(seq_ids[i]);
    if (it != seqs_.end()) set_in_flight(it->second.get(), false);
  }
}

bool Scheduler::is_in_flight(int64_t seq_id) const { return find_seq(seq_id)->in_flight; }

void Scheduler::remove_from_queue(Request* r) {
  switch (r->state) {
    case RequestState::kWaiting:
      waiting_.erase(r);
      break;
    case RequestState::kRunning: {
      auto it = std::find(running_.begin(), running_.end(), r);
      if (it != running_.end()) running_.erase(it);
      break;
    }
    case RequestState::kSwapped:
      swapped_.erase(r);
      break;
  }
}

void Scheduler::finish_seq(int64_t seq_id) {
  Sequence* s = find_seq(seq_id);
  Request* r = s->req;
  set_in_flight(s, false);  // its blocks go now (see mark_in_flight in scheduler.h)
  free_seq_blocks(s);
  if (r->state == RequestState::kRunning) --num_running_seqs_;
  r->seqs.erase(std::find(r->seqs.begin(), r->seqs.end(), s));
  finished_since_schedule_.push_back(seq_id);
  if (r->seqs.empty()) {
    remove_from_queue(r);
    requests_.erase(r->request_id);
  }
  seqs_.erase(seq_id);
}

std::vector<int64_t> Scheduler::abort_request(int64_t request_id) {
  std::vector<int64_t> removed;
  auto it = requests_.find(request_id);
  if (it == requests_.end()) return removed;
  Request* r = it->second.get();
  remove_from_queue(r);
  if (r->state == RequestState::kRunning)
    num_running_seqs_ -= static_cast<int>(r->seqs.size());
  for (Sequence* s : r->seqs) {
    removed.push_back(s->seq_id);
    set_in_flight(s, false);  // its blocks go now (see mark_in_flight in scheduler.h)
    free_seq_blocks(s);
  }
  for (int64_t sid : removed) seqs_.erase(sid);
  finished_since_schedule_.insert(finished_since_schedule_.end(), removed.begin(), removed.end());
  requests_.erase(it);
  return removed;
}

const std::vector<int32_t>& Scheduler::block_table(int64_t seq_id) const {
  return find_seq(seq_id)->block_table;
}
const std::vector<int32_t>& Scheduler::cpu_block_table(int64_t seq_id) const {
  return find_seq(seq_id)->cpu_block_table;
}
int32_t Scheduler::seq_len(int64_t seq_id) const {
  return static_cast<int32_t>(find_seq(seq_id)->tokens.size());
}
int32_t Scheduler::num_computed(int64_t seq_id) const {
  return find_seq(seq_id)->num_computed;
}
const std::vector<int32_t>& Scheduler::token_ids(int64_t seq_id) const {
  return find_seq(seq_id)->tokens;
}
int64_t Scheduler::request_of(int64_t seq_id) const {
  return find_seq(seq_id)->req->request_id;
}

void Scheduler::check_invariants() const {
  alloc_.check_invariants();
  const int bs = cfg_.block_size;
  std::vector<int32_t> owners(static_cast<size_t>(cfg_.num_device_blocks), 0);
  std::vector<int32_t> cpu_owners(static_cast<size_t>(cfg_.num_cpu_blocks), 0);
  size_t nseqs = 0;
  int running_seqs = 0;
  int in_flight = 0;
  for (const auto& kv : requests_) {
    const Request* r = kv.second.get();
    const std::string rid = "request " + std::to_string(r->request_id);
    if (r->request_id != kv.first) violation(rid + " stored under another id");
    if (r->seqs.empty()) violation(rid + " has no live sequences");
    Request* rp = const_cast<Request*>(r);
    switch (r->state) {
      case RequestState::kWaiting:
        if (!waiting_.count(rp)) violation(rid + " is waiting but not in the waiting queue");
        break;
      case RequestState::kRunning:
        if (std::find(running_.begin(), running_.end(), r) == running_.end())
          violation(rid + " is running but not in the running queue");
        running_seqs += static_cast<int>(r->seqs.size());
        break;
      case RequestState::kSwapped:
        if (!swapped_.count(rp)) violation(rid + " is swapped but not in the swapped queue");
        break;
    }
    int req_in_flight = 0;
    for (const Sequence* s : r->seqs)
      if (s->in_flight) ++req_in_flight;
    if (req_in_flight != r->num_in_flight) violation(rid + " in-flight counter is off");
    if (req_in_flight && r->state != RequestState::kRunning)
      violation(rid + " holds an in-flight sequence but is not running");
    in_flight += req_in_flight;
    for (const Sequence* s : r->seqs) {
      ++nseqs;
      const std::string sid = "seq " + std::to_string(s->seq_id);
      auto it = seqs_.find(s->seq_id);
      if (it == seqs_.end() || it->second.get() != s) violation(sid + " not in the seq map");
      if (s->req != r) violation(sid + " points at another request");
      const int32_t len = static_cast<int32_t>(s->tokens.size());
      if (len <= 0) violation(sid + " has no tokens");
      if (s->num_computed < 0 || s->num_computed > len)
        violation(sid + " num_computed out of range");
      if (static_cast<int32_t>(s->block_hashes.size()) > len / bs)
        violation(sid + " has hashes for non-full blocks");
      if (s->num_registered > s->num_computed / bs)
        violation(sid + " registered uncomputed blocks");
      const int32_t nb = blocks_for(s->num_computed);
      switch (r->state) {
        case RequestState::kWaiting:
          if (s->num_computed != 0 || !s->block_table.empty() || !s->cpu_block_table.empty())
            violation(sid + " is waiting but holds blocks or computed tokens");
          break;
        case RequestState::kRunning:
          if (static_cast<int32_t>(s->block_table.size()) != nb)
            violation(sid + " block table size != ceil(num_computed / block_size)");
          if (!s->cpu_block_table.empty()) violation(sid + " is running but holds cpu blocks");
          break;
        case RequestState::kSwapped:
          if (static_cast<int32_t>(s->cpu_block_table.size()) != nb || !s->block_table.empty())
            violation(sid + " is swapped but its tables are inconsistent");
          break;
      }
      for (size_t k = 0; k < s->block_table.size(); ++k) {
        const int32_t b = s->block_table[k];
        if (b < 0 || b >= cfg_.num_device_blocks) violation(sid + " holds an invalid block id");
        ++owners[b];
        const int32_t* ct = alloc_.cached_tokens(b);
        if (ct) {
          // A sequence holds a cached block partially only after a rollback into it while
          // a sibling that holds it full (re)registered it; its next write goes to a copy
          // or drops the hash (commit_tokens), so only its computed prefix must agree.
          const int32_t held = std::min<int32_t>(bs, s->num_computed - static_cast<int32_t>(k) * bs);
          if (held < bs && alloc_.ref_count(b) < 2 && r->seqs.size() < 2)
            violation(sid + " references cached block " + std::to_string(b) +
                      " that it has not fully computed");
          if (std::memcmp(ct, s->tokens.data() + k * bs, sizeof(int32_t) * held) != 0)
            violation("cached block " + std::to_string(b) + " tokens differ from " + sid);
          if (held == bs && k < s->block_hashes.size() &&
              alloc_.block_hash(b) != s->block_hashes[k])
            violation("cached block " + std::to_string(b) + " hash differs from " + sid);
        }
      }
      for (int32_t cb : s->cpu_block_table) {
        if (cb < 0 || cb >= cfg_.num_cpu_blocks) violation(sid + " holds an invalid cpu block id");
        ++cpu_owners[cb];
      }
    }
  }
  if (nseqs != seqs_.size()) violation("seq map holds sequences of no request");
  if (waiting_.size() + running_.size() + swapped_.size() != requests_.size())
    violation("queue sizes do not add up to the number of requests");
  if (running_seqs != num_running_seqs_) violation("running sequence counter is off");
  if (in_flight != num_in_flight_) violation("in-flight sequence counter is off");
  for (size_t i = 1; i < running_.size(); ++i)
    if (RunOrder()(running_[i], running_[i - 1])) violation("running queue out of order");
  for (int b = 0; b < cfg_.num_device_blocks; ++b)
    if (alloc_.ref_count(b) != owners[b])
      violation("block " + std::to_string(b) + " ref count " +
                std::to_string(alloc_.ref_count(b)) + " != owners " +
                std::to_string(owners[b]));
  for (int b = 0; b < cfg_.num_cpu_blocks; ++b)
    if (alloc_.cpu_ref_count(b) != cpu_owners[b])
      violation("cpu block " + std::to_string(b) + " ref count != owners");
}

}  // namespace llmcore
