// Continuous-batching scheduler over a paged KV cache (BlockAllocator).
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "llmcore/block_allocator.h"
#include "llmcore/sequence.h"

namespace llmcore {

enum class PreemptionMode : uint8_t { kRecompute, kSwap };

struct SchedulerConfig {
  int block_size = 16;
  int num_device_blocks = 0;
  int num_cpu_blocks = 0;
  int max_num_seqs = 256;
  int max_num_batched_tokens = 2048;
  int max_model_len = 2048;
  bool enable_chunked_prefill = false;
  bool enable_prefix_caching = false;
  PreemptionMode preemption_mode = PreemptionMode::kRecompute;
  double watermark = 0.01;
  // vLLM's --scheduler-delay-factor: while requests run, waiting prompts are admitted only
  // once the oldest of them has waited longer than delay_factor x the latency of the last
  // step that admitted prompts, so that arrivals batch into fewer prefill steps and decodes
  // are not interrupted by every single one. 0 = admit at once.
  double delay_factor = 0.0;
  // Pipeline parallelism: up to this many micro-batches in flight at once, each holding a
  // disjoint set of sequences (vLLM's virtual engines; = the pipeline-parallel size). With
  // more than one, schedule() marks every sequence it schedules in flight (see
  // mark_in_flight) and gives each micro-batch about 1/num_micro_batches of the live
  // sequences, so that the micro-batches stay balanced. 1: every step is complete before
  // the next is scheduled (nothing is marked).
  int num_micro_batches = 1;

  // Throws std::invalid_argument on a bad configuration.
  void validate() const;
};

// One step's batch. Entries [0, num_prefill_seqs) are prefill chunks, the rest
// decodes. A decode is a running sequence whose prompt (everything it held when it
// was last admitted) is computed; it carries all of its uncomputed tokens that fit
// the token budget: 1 for plain decoding, k + 1 for a speculative verify step, more
// when several tokens were appended since it last ran. Pair arrays are flattened
// row-major ([k, 2]).
//
// Runner state: is_new[i] == 1 when entry i's sequence is scheduled for the first
// time since it was added / forked / preempted (recompute or swap), i.e. the runner
// must (re)build its per-request state; finished_seq_ids lists sequences finished or
// aborted since the previous schedule() returned (apply it before the entries: an id
// may be reused by a new sequence); preempted_seq_ids the sequences preempted this step.
struct SchedulerOutput {
  int32_t num_seqs = 0;
  int32_t num_prefill_seqs = 0;
  int32_t num_batched_tokens = 0;
  int32_t max_blocks = 0;  // columns of block_tables
  std::vector<int64_t> seq_ids;
  std::vector<int64_t> request_ids;
  std::vector<int32_t> num_tokens;
  std::vector<int32_t> context_lens;
  std::vector<int32_t> seq_lens;
  std::vector<uint8_t> do_sample;
  std::vector<int32_t> query_start_loc;  // num_seqs + 1
  std::vector<int32_t> input_ids;
  std::vector<int32_t> positions;
  std::vector<int64_t> slot_mapping;
  std::vector<int32_t> block_tables;  // num_seqs * max_blocks, 0-padded
  std::vector<int64_t> blocks_to_swap_in;   // (cpu, device)
  std::vector<int64_t> blocks_to_swap_out;  // (device, cpu)
  std::vector<int64_t> blocks_to_copy;      // (src, dst)
  std::vector<int64_t> preempted_request_ids;
  std::vector<uint8_t> is_new;              // num_seqs
  std::vector<int64_t> finished_seq_ids;
  std::vector<int64_t> preempted_seq_ids;

  // Scheduler bookkeeping, not step data: the block-table version each row of
  // block_tables holds, so that a recycled output rewrites only the rows (and the
  // appended blocks) that changed. The arrays are views of this storage: read them,
  // never write them.
  std::vector<uint64_t> row_table_version;
  std::vector<int32_t> row_table_len;
  int32_t table_rows = 0;
  int32_t table_stride = 0;

  SchedulerOutput();
  void clear();
  // Scheduler use: resets the counts and the lists that are appended to during a
  // step; the per-row / per-token arrays keep their size (build_output resizes them).
  void begin_step();
};

class Scheduler {
 public:
  explicit Scheduler(const SchedulerConfig& config);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  const SchedulerConfig& config() const { return cfg_; }

  // Errors -> std::invalid_argument.
  void add_request(int64_t request_id, int64_t seq_id, const int32_t* prompt,
                   size_t prompt_len, double arrival_time = 0.0, int32_t priority = 0,
                   uint64_t extra_hash_key = 0, bool allow_prefix_cache = true);
  void add_request(int64_t request_id, int64_t seq_id,
                   const std::vector<int32_t>& prompt, double arrival_time = 0.0,
                   int32_t priority = 0, uint64_t extra_hash_key = 0,
                   bool allow_prefix_cache = true) {
    add_request(request_id, seq_id, prompt.data(), prompt.size(), arrival_time,
                priority, extra_hash_key, allow_prefix_cache);
  }
  void fork(int64_t parent_seq_id, int64_t child_seq_id);
  // Appends token_ids[i] to seq_ids[i]. Validates all ids before changing anything.
  void update(const int64_t* seq_ids, const int32_t* token_ids, size_t n);
  void update(const std::vector<int64_t>& seq_ids, const std::vector<int32_t>& token_ids);
  // Pipelined engines: append_placeholders() grows each sequence by one token whose value
  // is not on the host yet (schedulable: its input comes from the device); set_last_tokens()
  // later writes the value of each live seq's last token (ids no longer live are skipped).
  // Blocks holding a placeholder are never hashed or offered to the prefix cache.
  void append_placeholders(const int64_t* seq_ids, size_t n);
  void set_last_tokens(const int64_t* seq_ids, const int32_t* token_ids, size_t n);

  // k tokens per step (speculative decoding). All of them validate every id and count
  // before changing anything (std::invalid_argument); token arrays are flat, seq i's
  // counts[i] values following seq i-1's.
  // Appends counts[i] >= 1 placeholder tokens to seq_ids[i].
  void append_placeholders(const int64_t* seq_ids, const int32_t* counts, size_t n);
  // Writes the values of the last counts[i] (>= 0, <= seq_len) tokens of each live seq;
  // ids no longer live are skipped (with their values), as in set_last_tokens().
  void set_tokens(const int64_t* seq_ids, const int32_t* counts, const int32_t* token_ids,
                  size_t n);
  // Appends counts[i] >= 0 known tokens to seq_ids[i].
  void update_multi(const int64_t* seq_ids, const int32_t* counts, const int32_t* token_ids,
                    size_t n);
  // Removes the last num_tokens[i] tokens of seq_ids[i] (0 <= num_tokens[i] < seq_len,
  // ids distinct): token and computed counts shrink, blocks past the new end go back to
  // the allocator, and a kept last block that is no longer full leaves the prefix cache
  // (its next write goes to a copy when it is shared, as for any shared partial block).
  void rollback(const int64_t* seq_ids, const int32_t* num_tokens, size_t n);
  void finish_seq(int64_t seq_id);
  std::vector<int64_t> abort_request(int64_t request_id);

  // Micro-batches (pipeline parallelism). An in-flight sequence is one whose step was
  // launched and has not come back: schedule() skips it, and never preempts (recompute or
  // swap) a request holding one. schedule() marks what it schedules itself when
  // num_micro_batches > 1; a fork inherits its parent's mark. mark_in_flight validates
  // every id first (unknown, given twice, already in flight or not running:
  // std::invalid_argument). clear_in_flight, when the step came back, skips ids no longer
  // live (finished or aborted meanwhile) and ids not in flight. finish_seq /
  // abort_request release an in-flight sequence's blocks at once: every pipeline stage
  // runs the micro-batches in launch order, so a later micro-batch that reuses the blocks
  // writes them only after the in-flight one is done with them on that stage.
  void mark_in_flight(const int64_t* seq_ids, size_t n);
  void clear_in_flight(const int64_t* seq_ids, size_t n);
  bool is_in_flight(int64_t seq_id) const;
  int num_in_flight() const { return num_in_flight_; }

  // The returned object is recycled by a later schedule() once the caller
  // dropped every reference to it. now: the caller's clock, on the scale of the
  // arrival times (the scheduler reads no clock); only delay_factor > 0 uses it.
  std::shared_ptr<SchedulerOutput> schedule(double now = 0.0);

  bool has_unfinished() const { return !requests_.empty(); }
  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  int num_running() const { return static_cast<int>(running_.size()); }
  int num_swapped() const { return static_cast<int>(swapped_.size()); }
  int num_free_device_blocks() const { return alloc_.num_free_blocks(); }
  int num_free_cpu_blocks() const { return alloc_.num_free_cpu_blocks(); }
  int num_device_blocks() const { return alloc_.num_device_blocks(); }
  int num_cpu_blocks() const { return alloc_.num_cpu_blocks(); }
  double device_usage() const { return alloc_.usage(); }
  double cpu_usage() const { return alloc_.cpu_usage(); }
  double prefix_cache_hit_rate() const { return alloc_.hit_rate(); }
  int64_t prefix_cache_queried_tokens() const { return alloc_.queried_tokens(); }
  int64_t prefix_cache_hit_tokens() const { return alloc_.hit_tokens(); }
  int64_t num_preemptions() const { return num_preemptions_; }

  // Per-sequence queries; unknown ids -> std::invalid_argument.
  const std::vector<int32_t>& block_table(int64_t seq_id) const;
  const std::vector<int32_t>& cpu_block_table(int64_t seq_id) const;
  int32_t seq_len(int64_t seq_id) const;
  int32_t num_computed(int64_t seq_id) const;
  const std::vector<int32_t>& token_ids(int64_t seq_id) const;
  int64_t request_of(int64_t seq_id) const;
  bool has_seq(int64_t seq_id) const { return seqs_.count(seq_id) != 0; }
  bool has_request(int64_t request_id) const { return requests_.count(request_id) != 0; }
  int32_t ref_count(int32_t block_id) const { return alloc_.ref_count(block_id); }

  const BlockAllocator& allocator() const { return alloc_; }

  // Throws std::runtime_error naming the first violated invariant.
  void check_invariants() const;

 private:
  struct Planned {
    Sequence* seq;
    int32_t num_tokens;
    int32_t num_hit_blocks;  // prefix-cache hits (admission only)
  };
  struct Scheduled {
    Sequence* seq;
    int32_t context_len;
    int32_t num_tokens;
  };
  enum class RunResult { kScheduled, kSkipped, kSelfPreempted };

  Sequence* find_seq(int64_t seq_id) const;
  int blocks_for(int32_t num_tokens) const {
    return (num_tokens + cfg_.block_size - 1) / cfg_.block_size;
  }
  bool caching_for(const Request* r) const {
    return cfg_.enable_prefix_caching && r->allow_prefix_cache;
  }
  void ensure_hashes(Sequence* s, int32_t num_blocks);
  void register_full_blocks(Sequence* s);

  RunResult schedule_running(Request* r, bool allow_preempt);
  Request* pick_victim(const Request* r) const;  // nullptr: none may be preempted
  void set_in_flight(Sequence* s, bool on);
  bool try_swap_in(Request* r);
  bool try_admit(Request* r);
  void commit_tokens(Sequence* s, int32_t n);  // allocation (+CoW) done by caller
  void preempt(Request* victim);
  void preempt_recompute(Request* r);
  void swap_out(Request* r);
  void free_seq_blocks(Sequence* s);
  void remove_from_queue(Request* r);
  void insert_running(Request* r);
  void build_output(SchedulerOutput& out);
  bool passed_delay(double now);
  std::shared_ptr<SchedulerOutput> acquire_output();
  void resolve_seqs(const int64_t* seq_ids, size_t n);  // -> update_scratch_
  void rollback_seq(Sequence* s, int32_t num_tokens);
  // Call after any change of s->block_table other than appending blocks.
  void table_changed(Sequence* s) { s->table_version = ++table_versions_; }

  SchedulerConfig cfg_;
  BlockAllocator alloc_;
  int watermark_blocks_ = 0;

  std::unordered_map<int64_t, std::unique_ptr<Request>> requests_;
  std::unordered_map<int64_t, std::unique_ptr<Sequence>> seqs_;
  std::set<Request*, WaitOrder> waiting_;
  std::vector<Request*> running_;  // sorted by RunOrder
  std::set<Request*, RunOrder> swapped_;
  int num_running_seqs_ = 0;
  uint64_t next_seqno_ = 0;
  int64_t num_preemptions_ = 0;
  int num_in_flight_ = 0;
  // delay_factor: when the last step that admitted prompts was scheduled, and its latency
  bool prev_step_admitted_ = false;
  double prev_schedule_time_ = 0.0;
  double last_prompt_latency_ = 0.0;

  // Per-step state / scratch (kept to avoid per-step allocation).
  SchedulerOutput* out_ = nullptr;
  // Outputs are recycled once the caller dropped them; a few, so that an engine that
  // holds step N's output while scheduling step N+1 still gets a warm one.
  static constexpr size_t kOutputPoolSize = 3;
  std::vector<std::shared_ptr<SchedulerOutput>> output_pool_;
  int last_pooled_ = -1;
  int token_budget_ = 0;
  int seq_budget_ = 0;
  int step_seq_budget_ = 0;  // seq_budget_ at the start of the step
  bool preempted_this_step_ = false;
  std::vector<Planned> plan_;
  std::vector<Scheduled> prefills_;
  std::vector<Scheduled> decodes_;
  std::vector<int32_t> hit_scratch_;
  std::vector<std::pair<int32_t, int32_t>> cow_scratch_;
  std::vector<uint32_t> dev_stamp_;
  std::vector<int32_t> dev_map_;
  std::vector<uint32_t> cpu_stamp_;
  std::vector<int32_t> cpu_map_;
  uint32_t stamp_ = 0;
  std::vector<Sequence*> update_scratch_;
  std::vector<int64_t> finished_since_schedule_;
  uint32_t op_stamp_ = 0;
  uint64_t table_versions_ = 0;
};

}  // namespace llmcore
