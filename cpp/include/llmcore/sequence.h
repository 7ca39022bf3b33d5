// Sequences and requests (sequence groups) tracked by the scheduler.
#pragma once

#include <cstdint>
#include <vector>

namespace llmcore {

enum class RequestState : uint8_t { kWaiting, kRunning, kSwapped };

struct Request;

struct Sequence {
  int64_t seq_id = 0;
  Request* req = nullptr;
  std::vector<int32_t> tokens;       // prompt + generated
  int32_t num_computed = 0;          // tokens whose K/V is (being) written
  int32_t prefill_end = 0;           // tokens.size() at (re)admission
  int32_t num_registered = 0;        // leading full blocks offered to the prefix cache
  int32_t num_placeholders = 0;      // trailing window that may hold unknown values
  bool is_new = true;                // next scheduling must (re)build runner state
  bool in_flight = false;            // in a launched micro-batch that has not come back
  uint32_t op_stamp = 0;             // duplicate-id detection in batched calls
  uint64_t table_version = 0;        // changes whenever block_table changes other than by appends
  std::vector<int32_t> block_table;      // device blocks (running)
  std::vector<int32_t> cpu_block_table;  // cpu blocks (swapped)
  std::vector<uint64_t> block_hashes;    // chained hashes of leading full blocks
};

struct Request {
  int64_t request_id = 0;
  double arrival = 0.0;
  int32_t priority = 0;
  uint64_t extra_key = 0;
  bool allow_prefix_cache = true;
  bool front = false;  // recompute-preempted: goes before equal-priority waiters
  uint64_t seqno = 0;  // add order, final tie break
  int32_t num_in_flight = 0;  // live sequences with in_flight set: never preempted
  RequestState state = RequestState::kWaiting;
  std::vector<Sequence*> seqs;  // live sequences
};

// Running / swapped order: (priority asc, arrival asc, seqno asc).
struct RunOrder {
  bool operator()(const Request* a, const Request* b) const {
    if (a->priority != b->priority) return a->priority < b->priority;
    if (a->arrival != b->arrival) return a->arrival < b->arrival;
    return a->seqno < b->seqno;
  }
};

// Waiting order: preempted requests go to the front of their priority level.
struct WaitOrder {
  bool operator()(const Request* a, const Request* b) const {
    if (a->priority != b->priority) return a->priority < b->priority;
    if (a->front != b->front) return a->front;
    if (a->arrival != b->arrival) return a->arrival < b->arrival;
    return a->seqno < b->seqno;
  }
};

}  // namespace llmcore
