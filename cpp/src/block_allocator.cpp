#include "llmcore/block_allocator.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace llmcore {

namespace {
[[noreturn]] void violation(const std::string& what) {
  throw std::runtime_error("block allocator invariant violated: " + what);
}
}  // namespace

BlockAllocator::BlockAllocator(int block_size, int num_device_blocks,
                               int num_cpu_blocks, bool enable_prefix_caching)
    : block_size_(block_size),
      num_device_blocks_(num_device_blocks),
      num_cpu_blocks_(num_cpu_blocks),
      prefix_caching_(enable_prefix_caching) {
  if (block_size <= 0) throw std::invalid_argument("block_size must be > 0");
  if (num_device_blocks <= 0)
    throw std::invalid_argument("num_device_blocks must be > 0");
  if (num_cpu_blocks < 0) throw std::invalid_argument("num_cpu_blocks must be >= 0");
  const size_t n = static_cast<size_t>(num_device_blocks);
  ref_.assign(n, 0);
  free_.reserve(n);
  // Stack: allocate() hands out 0, 1, 2, ... on a fresh pool.
  for (int32_t b = num_device_blocks - 1; b >= 0; --b) free_.push_back(b);
  if (prefix_caching_) {
    cached_.assign(n, 0);
    hash_.assign(n, 0);
    parent_hash_.assign(n, 0);
    extra_key_.assign(n, 0);
    tokens_.assign(n * static_cast<size_t>(block_size), 0);
    lru_prev_.assign(n, -1);
    lru_next_.assign(n, -1);
    in_lru_.assign(n, 0);
    cache_.init(n);
  }
  cpu_ref_.assign(static_cast<size_t>(num_cpu_blocks), 0);
  cpu_free_.reserve(static_cast<size_t>(num_cpu_blocks));
  for (int32_t b = num_cpu_blocks - 1; b >= 0; --b) cpu_free_.push_back(b);
}

void BlockAllocator::check_device(int32_t block) const {
  if (block < 0 || block >= num_device_blocks_)
    throw std::out_of_range("device block id out of range: " + std::to_string(block));
}

void BlockAllocator::check_cpu(int32_t block) const {
  if (block < 0 || block >= num_cpu_blocks_)
    throw std::out_of_range("cpu block id out of range: " + std::to_string(block));
}

void BlockAllocator::lru_push_back(int32_t b) {
  lru_prev_[b] = lru_tail_;
  lru_next_[b] = -1;
  if (lru_tail_ >= 0) lru_next_[lru_tail_] = b; else lru_head_ = b;
  lru_tail_ = b;
  in_lru_[b] = 1;
  ++num_evictable_;
}

void BlockAllocator::lru_remove(int32_t b) {
  const int32_t p = lru_prev_[b], n = lru_next_[b];
  if (p >= 0) lru_next_[p] = n; else lru_head_ = n;
  if (n >= 0) lru_prev_[n] = p; else lru_tail_ = p;
  lru_prev_[b] = lru_next_[b] = -1;
  in_lru_[b] = 0;
  --num_evictable_;
}

void BlockAllocator::uncache(int32_t b) {
  cache_.erase(hash_[b], b);
  cached_[b] = 0;
}

int32_t BlockAllocator::allocate() {
  int32_t b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else if (lru_head_ >= 0) {
    b = lru_head_;  // evict the least recently freed cached block
    lru_remove(b);
    uncache(b);
  } else {
    throw std::runtime_error("out of device KV blocks");
  }
  ref_[b] = 1;
  return b;
}

void BlockAllocator::incref(int32_t b) {
  check_device(b);
  if (ref_[b] == 0) {
    if (!prefix_caching_ || !in_lru_[b])
      throw std::logic_error("incref of a free block " + std::to_string(b));
    lru_remove(b);
  }
  ++ref_[b];
}

void BlockAllocator::decref(int32_t b) {
  check_device(b);
  if (ref_[b] <= 0) throw std::logic_error("double free of block " + std::to_string(b));
  if (--ref_[b] == 0) {
    if (prefix_caching_ && cached_[b]) lru_push_back(b);
    else free_.push_back(b);
  }
}

int32_t BlockAllocator::ref_count(int32_t b) const {
  check_device(b);
  return ref_[b];
}

int32_t BlockAllocator::lookup(uint64_t hash, uint64_t parent_hash, uint64_t extra_key,
                               const int32_t* tokens) const {
  if (!prefix_caching_) return -1;
  const int32_t b = cache_.find(hash);
  if (b < 0) return -1;
  // Verify: a hash collision must never hand out a block with other contents.
  if (parent_hash_[b] != parent_hash || extra_key_[b] != extra_key) return -1;
  if (std::memcmp(&tokens_[static_cast<size_t>(b) * block_size_], tokens,
                  sizeof(int32_t) * block_size_) != 0)
    return -1;
  return b;
}

bool BlockAllocator::register_block(int32_t b, uint64_t hash, uint64_t parent_hash,
                                    uint64_t extra_key, const int32_t* tokens) {
  if (!prefix_caching_) return false;
  check_device(b);
  if (cached_[b] || ref_[b] == 0) return false;
  if (!cache_.insert(hash, b)) return false;  // another block already serves this hash
  cached_[b] = 1;
  hash_[b] = hash;
  parent_hash_[b] = parent_hash;
  extra_key_[b] = extra_key;
  std::memcpy(&tokens_[static_cast<size_t>(b) * block_size_], tokens,
              sizeof(int32_t) * block_size_);
  return true;
}

void BlockAllocator::uncache_block(int32_t b) {
  check_device(b);
  if (!prefix_caching_ || !cached_[b]) return;
  if (in_lru_[b]) {
    lru_remove(b);
    free_.push_back(b);
  }
  uncache(b);
}

bool BlockAllocator::is_cached(int32_t b) const {
  check_device(b);
  return prefix_caching_ && cached_[b];
}

bool BlockAllocator::is_evictable(int32_t b) const {
  check_device(b);
  return prefix_caching_ && in_lru_[b];
}

uint64_t BlockAllocator::block_hash(int32_t b) const {
  check_device(b);
  return prefix_caching_ && cached_[b] ? hash_[b] : 0;
}

const int32_t* BlockAllocator::cached_tokens(int32_t b) const {
  check_device(b);
  if (!prefix_caching_ || !cached_[b]) return nullptr;
  return &tokens_[static_cast<size_t>(b) * block_size_];
}

void BlockAllocator::reset_prefix_cache() {
  if (!prefix_caching_) return;
  while (lru_head_ >= 0) {
    const int32_t b = lru_head_;
    lru_remove(b);
    uncache(b);
    free_.push_back(b);
  }
}

int32_t BlockAllocator::allocate_cpu() {
  if (cpu_free_.empty()) throw std::runtime_error("out of CPU swap blocks");
  const int32_t b = cpu_free_.back();
  cpu_free_.pop_back();
  cpu_ref_[b] = 1;
  return b;
}

void BlockAllocator::incref_cpu(int32_t b) {
  check_cpu(b);
  if (cpu_ref_[b] <= 0) throw std::logic_error("incref of a free cpu block");
  ++cpu_ref_[b];
}

void BlockAllocator::decref_cpu(int32_t b) {
  check_cpu(b);
  if (cpu_ref_[b] <= 0) throw std::logic_error("double free of cpu block");
  if (--cpu_ref_[b] == 0) cpu_free_.push_back(b);
}

int32_t BlockAllocator::cpu_ref_count(int32_t b) const {
  check_cpu(b);
  return cpu_ref_[b];
}

void BlockAllocator::check_invariants() const {
  const size_t n = static_cast<size_t>(num_device_blocks_);
  std::vector<uint8_t> seen(n, 0);
  for (int32_t b : free_) {
    if (b < 0 || b >= num_device_blocks_) violation("free list holds an invalid id");
    if (seen[b]) violation("block " + std::to_string(b) + " is twice in the free list");
    seen[b] = 1;
    if (ref_[b] != 0) violation("free block " + std::to_string(b) + " has ref > 0");
    if (prefix_caching_ && cached_[b])
      violation("free-list block " + std::to_string(b) + " is still cached");
  }
  int lru_count = 0;
  if (prefix_caching_) {
    int32_t prev = -1;
    for (int32_t b = lru_head_; b >= 0; b = lru_next_[b]) {
      if (seen[b]) violation("block " + std::to_string(b) + " is in both free list and LRU (or LRU cycle)");
      seen[b] = 1;
      if (lru_prev_[b] != prev) violation("LRU links broken");
      if (!in_lru_[b]) violation("LRU block not flagged");
      if (ref_[b] != 0) violation("evictable block " + std::to_string(b) + " has ref > 0");
      if (!cached_[b]) violation("evictable block " + std::to_string(b) + " not cached");
      prev = b;
      ++lru_count;
    }
    if (prev != lru_tail_) violation("LRU tail mismatch");
    if (lru_count != num_evictable_) violation("evictable counter mismatch");
    size_t ncached = 0;
    for (size_t b = 0; b < n; ++b) {
      if (in_lru_[b] && !seen[b]) violation("flagged LRU block not in LRU list");
      if (cached_[b]) {
        ++ncached;
        if (cache_.find(hash_[b]) != static_cast<int32_t>(b))
          violation("cached block " + std::to_string(b) + " missing from hash map");
      }
    }
    if (ncached != cache_.size()) violation("hash map size != cached block count");
  }
  int used = 0;
  for (size_t b = 0; b < n; ++b) {
    if (ref_[b] < 0) violation("negative ref count");
    if (ref_[b] > 0) {
      ++used;
      if (seen[b]) violation("used block in free structures");
    } else if (!seen[b]) {
      violation("block " + std::to_string(b) + " leaked (ref 0, not free, not evictable)");
    }
  }
  if (used + static_cast<int>(free_.size()) + lru_count != num_device_blocks_)
    violation("free + evictable + used != total device blocks");
  std::vector<uint8_t> cseen(static_cast<size_t>(num_cpu_blocks_), 0);
  for (int32_t b : cpu_free_) {
    if (b < 0 || b >= num_cpu_blocks_) violation("cpu free list holds an invalid id");
    if (cseen[b]) violation("cpu block twice in free list");
    cseen[b] = 1;
    if (cpu_ref_[b] != 0) violation("free cpu block has ref > 0");
  }
  int cused = 0;
  for (int b = 0; b < num_cpu_blocks_; ++b) {
    if (cpu_ref_[b] > 0) ++cused;
    else if (!cseen[b]) violation("cpu block " + std::to_string(b) + " leaked");
  }
  if (cused + static_cast<int>(cpu_free_.size()) != num_cpu_blocks_)
    violation("cpu free + used != total cpu blocks");
}

}  // namespace llmcore
