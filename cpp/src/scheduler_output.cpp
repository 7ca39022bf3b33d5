// SchedulerOutput storage and its assembly from one step's scheduled entries.
#include <algorithm>
#include <cstring>

#include "llmcore/scheduler.h"

namespace llmcore {

SchedulerOutput::SchedulerOutput() {
  // Keep data() non-null so empty arrays can still be exported zero-copy.
  seq_ids.reserve(1);
  request_ids.reserve(1);
  num_tokens.reserve(1);
  context_lens.reserve(1);
  seq_lens.reserve(1);
  do_sample.reserve(1);
  query_start_loc.reserve(1);
  input_ids.reserve(1);
  positions.reserve(1);
  slot_mapping.reserve(1);
  block_tables.reserve(1);
  blocks_to_swap_in.reserve(2);
  blocks_to_swap_out.reserve(2);
  blocks_to_copy.reserve(2);
  preempted_request_ids.reserve(1);
  is_new.reserve(1);
  finished_seq_ids.reserve(1);
  preempted_seq_ids.reserve(1);
}

void SchedulerOutput::clear() {
  begin_step();
  seq_ids.clear();
  request_ids.clear();
  num_tokens.clear();
  context_lens.clear();
  seq_lens.clear();
  do_sample.clear();
  is_new.clear();
  query_start_loc.clear();
  input_ids.clear();
  positions.clear();
  slot_mapping.clear();
  block_tables.clear();
  row_table_version.clear();
  row_table_len.clear();
  table_rows = table_stride = 0;
}

void SchedulerOutput::begin_step() {
  num_seqs = num_prefill_seqs = num_batched_tokens = max_blocks = 0;
  blocks_to_swap_in.clear();
  blocks_to_swap_out.clear();
  blocks_to_copy.clear();
  preempted_request_ids.clear();
  finished_seq_ids.clear();
  preempted_seq_ids.clear();
}

void Scheduler::build_output(SchedulerOutput& out) {
  const int bs = cfg_.block_size;
  const size_t n = prefills_.size() + decodes_.size();
  int32_t total = 0;
  int32_t max_blocks = 0;
  for (const auto& e : prefills_) {
    total += e.num_tokens;
    max_blocks = std::max(max_blocks, static_cast<int32_t>(e.seq->block_table.size()));
  }
  for (const auto& e : decodes_) {
    total += e.num_tokens;
    max_blocks = std::max(max_blocks, static_cast<int32_t>(e.seq->block_table.size()));
  }
  out.num_seqs = static_cast<int32_t>(n);
  out.num_prefill_seqs = static_cast<int32_t>(prefills_.size());
  out.num_batched_tokens = total;
  out.max_blocks = max_blocks;
  out.seq_ids.resize(n);
  out.request_ids.resize(n);
  out.num_tokens.resize(n);
  out.context_lens.resize(n);
  out.seq_lens.resize(n);
  out.do_sample.resize(n);
  out.is_new.resize(n);
  out.query_start_loc.resize(n + 1);
  out.input_ids.resize(static_cast<size_t>(total));
  out.positions.resize(static_cast<size_t>(total));
  out.slot_mapping.resize(static_cast<size_t>(total));
  // Rows this object already holds (same layout) are patched, not rewritten.
  const size_t valid_rows = out.table_stride == max_blocks ? static_cast<size_t>(out.table_rows) : 0;
  out.block_tables.resize(n * static_cast<size_t>(max_blocks));
  out.row_table_version.resize(n);
  out.row_table_len.resize(n);
  // The per-row / per-token arrays were not cleared (begin_step): resize() keeps
  // their storage and does not zero what every row overwrites below.

  size_t row = 0;
  int32_t tok = 0;
  out.query_start_loc[0] = 0;
  auto emit = [&](const Scheduled& e) {
    Sequence* s = e.seq;
    const int32_t c = e.context_len, k = e.num_tokens;
    out.seq_ids[row] = s->seq_id;
    out.request_ids[row] = s->req->request_id;
    out.num_tokens[row] = k;
    out.context_lens[row] = c;
    out.seq_lens[row] = c + k;
    out.do_sample[row] = (c + k == static_cast<int32_t>(s->tokens.size())) ? 1 : 0;
    out.is_new[row] = s->is_new ? 1 : 0;
    s->is_new = false;
    std::memcpy(&out.input_ids[tok], s->tokens.data() + c, sizeof(int32_t) * k);
    const int32_t* table = s->block_table.data();
    for (int32_t j = 0; j < k; ++j) {
      const int32_t pos = c + j;
      out.positions[tok + j] = pos;
      out.slot_mapping[tok + j] =
          static_cast<int64_t>(table[pos / bs]) * bs + (pos % bs);
    }
    tok += k;
    out.query_start_loc[row + 1] = tok;
    int32_t* dst = out.block_tables.data() + row * static_cast<size_t>(max_blocks);
    const int32_t nb = static_cast<int32_t>(s->block_table.size());
    int32_t from = 0;
    if (row < valid_rows && out.row_table_version[row] == s->table_version &&
        out.row_table_len[row] <= nb) {
      from = out.row_table_len[row];  // same table plus appended blocks; padding is 0
    } else {
      std::memset(dst + nb, 0, sizeof(int32_t) * static_cast<size_t>(max_blocks - nb));
    }
    std::memcpy(dst + from, table + from, sizeof(int32_t) * static_cast<size_t>(nb - from));
    out.row_table_version[row] = s->table_version;
    out.row_table_len[row] = nb;
    ++row;
  };
  for (const auto& e : prefills_) emit(e);
  for (const auto& e : decodes_) emit(e);
  out.table_rows = static_cast<int32_t>(n);
  out.table_stride = max_blocks;
}

}  // namespace llmcore
