// Block hash -> block id map of the prefix cache: open addressing with linear
// probing and backward-shift deletion. Sized once for every device block (each
// block holds at most one hash), so it never rehashes and stays <= half full;
// one probe is usually one cache line, where std::unordered_map costs a modulo
// and a node indirection per lookup and a heap allocation per insert.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace llmcore {

class BlockHashMap {
 public:
  void init(size_t max_entries) {
    size_t cap = 16;
    while (cap < 2 * max_entries) cap <<= 1;
    keys_.assign(cap, 0);
    vals_.assign(cap, -1);
    mask_ = cap - 1;
    size_ = 0;
  }
  size_t size() const { return size_; }

  int32_t find(uint64_t key) const {
    if (vals_.empty()) return -1;
    for (size_t i = home(key);; i = (i + 1) & mask_) {
      if (vals_[i] < 0) return -1;
      if (keys_[i] == key) return vals_[i];
    }
  }
  // False (and no change) when the key is present.
  bool insert(uint64_t key, int32_t val) {
    size_t i = home(key);
    for (; vals_[i] >= 0; i = (i + 1) & mask_)
      if (keys_[i] == key) return false;
    keys_[i] = key;
    vals_[i] = val;
    ++size_;
    return true;
  }
  // Removes key if it maps to val.
  void erase(uint64_t key, int32_t val) {
    if (vals_.empty()) return;
    size_t i = home(key);
    for (;; i = (i + 1) & mask_) {
      if (vals_[i] < 0) return;
      if (keys_[i] == key) break;
    }
    if (vals_[i] != val) return;
    // Backward shift: pull later entries of the probe run into the hole when their
    // home slot is not cyclically within (hole, j].
    for (size_t j = (i + 1) & mask_; vals_[j] >= 0; j = (j + 1) & mask_) {
      const size_t h = home(keys_[j]);
      const bool stays = i <= j ? (i < h && h <= j) : (i < h || h <= j);
      if (stays) continue;
      keys_[i] = keys_[j];
      vals_[i] = vals_[j];
      i = j;
    }
    vals_[i] = -1;
    --size_;
  }

 private:
  size_t home(uint64_t key) const {
    return static_cast<size_t>((key * 0x9E3779B97F4A7C15ULL) >> 20) & mask_;
  }

  std::vector<uint64_t> keys_;
  std::vector<int32_t> vals_;  // -1: empty
  size_t mask_ = 0;
  size_t size_ = 0;
};

}  // namespace llmcore
