// Paged KV-cache block allocator with reference counting, copy-on-write
// support, automatic prefix caching (hash -> block, LRU eviction of
// unreferenced cached blocks) and a CPU (swap) block pool.
//
// The allocator only manages block ids and their metadata; block tables of
// sequences live in the scheduler.
#pragma once

#include <cstdint>
#include <vector>

#include "llmcore/block_hash_map.h"

namespace llmcore {

class BlockAllocator {
 public:
  BlockAllocator(int block_size, int num_device_blocks, int num_cpu_blocks,
                 bool enable_prefix_caching);

  int block_size() const { return block_size_; }
  int num_device_blocks() const { return num_device_blocks_; }
  int num_cpu_blocks() const { return num_cpu_blocks_; }
  bool prefix_caching() const { return prefix_caching_; }

  // ---- device blocks ----------------------------------------------------
  // Free = plain free blocks + cached blocks with ref 0 (evictable).
  int num_free_blocks() const {
    return static_cast<int>(free_.size()) + num_evictable_;
  }
  int num_plain_free_blocks() const { return static_cast<int>(free_.size()); }
  int num_evictable_blocks() const { return num_evictable_; }
  bool can_allocate(int num_blocks, int watermark_blocks = 0) const {
    return num_free_blocks() - num_blocks >= watermark_blocks;
  }
  // Fraction of device blocks referenced by live sequences.
  double usage() const {
    return num_device_blocks_ == 0
               ? 0.0
               : 1.0 - static_cast<double>(num_free_blocks()) / num_device_blocks_;
  }

  // Returns a block with ref count 1. Plain free blocks are used before
  // evicting the least recently freed cached block. Throws std::runtime_error
  // when nothing is free.
  int32_t allocate();
  // ref++. A block with ref 0 may only be re-referenced if it is cached
  // (it then leaves the evictable LRU list).
  void incref(int32_t block);
  // ref--. At 0 a cached block becomes evictable (appended to the LRU tail),
  // an uncached one goes back to the free list.
  void decref(int32_t block);
  int32_t ref_count(int32_t block) const;

  // ---- prefix cache -----------------------------------------------------
  // Cached block holding exactly `tokens` (block_size of them) for the given
  // hash chain, or -1. Does not change ref counts.
  int32_t lookup(uint64_t hash, uint64_t parent_hash, uint64_t extra_key,
                 const int32_t* tokens) const;
  // Registers a full, computed block under `hash`. No-op (returns false) when
  // caching is off, the block is already cached or another block already
  // holds that hash.
  bool register_block(int32_t block, uint64_t hash, uint64_t parent_hash,
                      uint64_t extra_key, const int32_t* tokens);
  // Drops the block's hash (its contents are about to change); an evictable block
  // becomes a plain free one. No-op when the block is not cached.
  void uncache_block(int32_t block);
  bool is_cached(int32_t block) const;
  bool is_evictable(int32_t block) const;
  uint64_t block_hash(int32_t block) const;
  const int32_t* cached_tokens(int32_t block) const;  // null if not cached
  int num_cached_blocks() const { return static_cast<int>(cache_.size()); }

  void record_query(int64_t queried_tokens, int64_t hit_tokens) {
    queried_tokens_ += queried_tokens;
    hit_tokens_ += hit_tokens;
  }
  int64_t queried_tokens() const { return queried_tokens_; }
  int64_t hit_tokens() const { return hit_tokens_; }
  double hit_rate() const {
    return queried_tokens_ == 0 ? 0.0
                                : static_cast<double>(hit_tokens_) / queried_tokens_;
  }
  // Evicts every unreferenced cached block (they become plain free blocks).
  void reset_prefix_cache();

  // ---- CPU (swap) blocks ------------------------------------------------
  int num_free_cpu_blocks() const { return static_cast<int>(cpu_free_.size()); }
  double cpu_usage() const {
    return num_cpu_blocks_ == 0
               ? 0.0
               : 1.0 - static_cast<double>(cpu_free_.size()) / num_cpu_blocks_;
  }
  int32_t allocate_cpu();
  void incref_cpu(int32_t block);
  void decref_cpu(int32_t block);
  int32_t cpu_ref_count(int32_t block) const;

  // Internal consistency (free list / LRU / cache map / counters); throws
  // std::runtime_error naming the first violation. Ref counts against owners
  // are checked by the scheduler.
  void check_invariants() const;

 private:
  void check_device(int32_t block) const;
  void check_cpu(int32_t block) const;
  void lru_push_back(int32_t block);
  void lru_remove(int32_t block);
  void uncache(int32_t block);

  int block_size_;
  int num_device_blocks_;
  int num_cpu_blocks_;
  bool prefix_caching_;

  std::vector<int32_t> ref_;
  std::vector<int32_t> free_;  // stack of plain free device blocks

  // Prefix cache metadata, indexed by block (only sized when caching is on).
  std::vector<uint8_t> cached_;
  std::vector<uint64_t> hash_;
  std::vector<uint64_t> parent_hash_;
  std::vector<uint64_t> extra_key_;
  std::vector<int32_t> tokens_;  // num_device_blocks * block_size
  BlockHashMap cache_;

  // Intrusive LRU list of evictable blocks (cached, ref 0); head = oldest.
  std::vector<int32_t> lru_prev_;
  std::vector<int32_t> lru_next_;
  std::vector<uint8_t> in_lru_;
  int32_t lru_head_ = -1;
  int32_t lru_tail_ = -1;
  int num_evictable_ = 0;

  int64_t queried_tokens_ = 0;
  int64_t hit_tokens_ = 0;

  std::vector<int32_t> cpu_ref_;
  std::vector<int32_t> cpu_free_;
};

}  // namespace llmcore
