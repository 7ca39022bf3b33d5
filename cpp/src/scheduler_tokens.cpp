// Scheduler: appending, writing and rolling back the tokens of sequences
// (one token per step, k tokens per step for speculative decoding, placeholders
// whose values are still on the device).
#include <algorithm>
#include <stdexcept>
#include <string>

#include "llmcore/scheduler.h"

namespace llmcore {

namespace {
[[noreturn]] void bad(const char* fn, const std::string& what) {
  throw std::invalid_argument(std::string(fn) + ": " + what);
}
}  // namespace

void Scheduler::resolve_seqs(const int64_t* seq_ids, size_t n) {
  update_scratch_.resize(n);
  for (size_t i = 0; i < n; ++i) update_scratch_[i] = find_seq(seq_ids[i]);
}

void Scheduler::update(const int64_t* seq_ids, const int32_t* token_ids, size_t n) {
  resolve_seqs(seq_ids, n);
  for (size_t i = 0; i < n; ++i) update_scratch_[i]->tokens.push_back(token_ids[i]);
}

void Scheduler::update(const std::vector<int64_t>& seq_ids,
                       const std::vector<int32_t>& token_ids) {
  if (seq_ids.size() != token_ids.size())
    throw std::invalid_argument("update: seq_ids and token_ids differ in length");
  update(seq_ids.data(), token_ids.data(), seq_ids.size());
}

void Scheduler::append_placeholders(const int64_t* seq_ids, size_t n) {
  resolve_seqs(seq_ids, n);
  for (size_t i = 0; i < n; ++i) {
    update_scratch_[i]->tokens.push_back(0);
    ++update_scratch_[i]->num_placeholders;
  }
}

void Scheduler::set_last_tokens(const int64_t* seq_ids, const int32_t* token_ids, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    auto it = seqs_.find(seq_ids[i]);
    if (it == seqs_.end() || it->second->tokens.empty()) continue;
    Sequence* s = it->second.get();
    s->tokens.back() = token_ids[i];
    if (s->num_placeholders > 0) --s->num_placeholders;
  }
}

// ---------------------------------------------------------------------------
// k tokens per step

void Scheduler::append_placeholders(const int64_t* seq_ids, const int32_t* counts, size_t n) {
  resolve_seqs(seq_ids, n);
  for (size_t i = 0; i < n; ++i)
    if (counts[i] < 1)
      bad("append_placeholders", "count " + std::to_string(counts[i]) + " for seq " +
                                     std::to_string(seq_ids[i]) + " must be >= 1");
  for (size_t i = 0; i < n; ++i) {
    Sequence* s = update_scratch_[i];
    s->tokens.insert(s->tokens.end(), static_cast<size_t>(counts[i]), 0);
    s->num_placeholders += counts[i];
  }
}

void Scheduler::update_multi(const int64_t* seq_ids, const int32_t* counts,
                             const int32_t* token_ids, size_t n) {
  resolve_seqs(seq_ids, n);
  for (size_t i = 0; i < n; ++i)
    if (counts[i] < 0)
      bad("update_multi", "count " + std::to_string(counts[i]) + " for seq " +
                              std::to_string(seq_ids[i]) + " must be >= 0");
  size_t off = 0;
  for (size_t i = 0; i < n; ++i) {
    Sequence* s = update_scratch_[i];
    const int32_t k = counts[i];
    s->tokens.insert(s->tokens.end(), token_ids + off, token_ids + off + k);
    off += static_cast<size_t>(k);
    // Known tokens after unknown ones: the placeholder window must still cover those.
    if (s->num_placeholders > 0) s->num_placeholders += k;
  }
}

void Scheduler::set_tokens(const int64_t* seq_ids, const int32_t* counts,
                           const int32_t* token_ids, size_t n) {
  const int bs = cfg_.block_size;
  update_scratch_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    if (counts[i] < 0)
      bad("set_tokens", "count " + std::to_string(counts[i]) + " must be >= 0");
    auto it = seqs_.find(seq_ids[i]);
    Sequence* s = it == seqs_.end() ? nullptr : it->second.get();
    update_scratch_[i] = s;
    if (!s) continue;  // finished or aborted meanwhile: its values are dropped
    const int32_t len = static_cast<int32_t>(s->tokens.size());
    if (counts[i] > len)
      bad("set_tokens", "count " + std::to_string(counts[i]) + " exceeds the length " +
                            std::to_string(len) + " of seq " + std::to_string(seq_ids[i]));
    // A registered block's tokens are fixed: the prefix cache serves them to others.
    if (len - counts[i] < s->num_registered * bs)
      bad("set_tokens", "would overwrite tokens of seq " + std::to_string(seq_ids[i]) +
                            " that are in the prefix cache");
  }
  size_t off = 0;
  for (size_t i = 0; i < n; ++i) {
    Sequence* s = update_scratch_[i];
    const int32_t k = counts[i];
    if (s) {
      const int32_t start = static_cast<int32_t>(s->tokens.size()) - k;
      std::copy(token_ids + off, token_ids + off + k, s->tokens.begin() + start);
      // Hashes of blocks holding rewritten tokens are stale.
      if (static_cast<int32_t>(s->block_hashes.size()) > start / bs)
        s->block_hashes.resize(static_cast<size_t>(start / bs));
      // Written values are known; unknown ones before them keep the window open.
      if (k >= s->num_placeholders) s->num_placeholders = 0;
    }
    off += static_cast<size_t>(k);
  }
}

// ---------------------------------------------------------------------------
// Rollback of rejected (draft) tokens

void Scheduler::rollback(const int64_t* seq_ids, const int32_t* num_tokens, size_t n) {
  resolve_seqs(seq_ids, n);
  const uint32_t stamp = ++op_stamp_;
  for (size_t i = 0; i < n; ++i) {
    Sequence* s = update_scratch_[i];
    if (s->op_stamp == stamp)
      bad("rollback", "seq " + std::to_string(seq_ids[i]) + " given twice");
    s->op_stamp = stamp;
    const int32_t len = static_cast<int32_t>(s->tokens.size());
    if (num_tokens[i] < 0 || num_tokens[i] >= len)
      bad("rollback", "cannot remove " + std::to_string(num_tokens[i]) + " of the " +
                          std::to_string(len) + " tokens of seq " +
                          std::to_string(seq_ids[i]) + " (a sequence keeps >= 1 token)");
  }
  for (size_t i = 0; i < n; ++i) rollback_seq(update_scratch_[i], num_tokens[i]);
}

void Scheduler::rollback_seq(Sequence* s, int32_t k) {
  if (k == 0) return;
  const int bs = cfg_.block_size;
  const int32_t len = static_cast<int32_t>(s->tokens.size()) - k;
  s->tokens.resize(static_cast<size_t>(len));
  s->num_placeholders = std::max(0, s->num_placeholders - k);
  s->prefill_end = std::min(s->prefill_end, len);
  if (static_cast<int32_t>(s->block_hashes.size()) > len / bs)
    s->block_hashes.resize(static_cast<size_t>(len / bs));
  if (s->num_computed <= len) return;  // only uncomputed tokens went

  s->num_computed = len;
  s->num_registered = std::min(s->num_registered, len / bs);
  const size_t keep = static_cast<size_t>(blocks_for(len));
  if (s->req->state == RequestState::kRunning) {
    // Tail first: like free_seq_blocks, the tail becomes the first eviction candidate.
    // Dropped full blocks stay cached: their K/V is exactly what their hash describes.
    for (size_t b = s->block_table.size(); b > keep; --b) alloc_.decref(s->block_table[b - 1]);
    s->block_table.resize(keep);
    // The kept last block is no longer full for this sequence and will be written
    // again; its hash would describe tokens it is about to lose.
    if (len % bs != 0) alloc_.uncache_block(s->block_table[keep - 1]);
    table_changed(s);
  } else if (s->req->state == RequestState::kSwapped) {
    for (size_t b = s->cpu_block_table.size(); b > keep; --b)
      alloc_.decref_cpu(s->cpu_block_table[b - 1]);
    s->cpu_block_table.resize(keep);
  }
}

}  // namespace llmcore
