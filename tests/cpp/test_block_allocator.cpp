#include <gtest/gtest.h>

#include <numeric>
#include <stdexcept>
#include <vector>

#include "llmcore/block_allocator.h"
#include "llmcore/block_hash.h"

using llmcore::BlockAllocator;

namespace {
std::vector<int32_t> toks(int start, int n) {
  std::vector<int32_t> t(n);
  std::iota(t.begin(), t.end(), start);
  return t;
}
}  // namespace

TEST(BlockAllocator, AllocateFreeRefCounts) {
  BlockAllocator a(16, 4, 2, false);
  EXPECT_EQ(a.num_free_blocks(), 4);
  int32_t b0 = a.allocate(), b1 = a.allocate();
  EXPECT_EQ(b0, 0);
  EXPECT_EQ(b1, 1);
  EXPECT_EQ(a.ref_count(b0), 1);
  EXPECT_DOUBLE_EQ(a.usage(), 0.5);
  a.incref(b0);  // fork
  EXPECT_EQ(a.ref_count(b0), 2);
  a.decref(b0);
  EXPECT_EQ(a.num_free_blocks(), 2);
  a.decref(b0);
  EXPECT_EQ(a.num_free_blocks(), 3);
  EXPECT_THROW(a.decref(b0), std::logic_error);
  EXPECT_THROW(a.incref(b0), std::logic_error);
  a.allocate();
  a.allocate();
  a.allocate();
  EXPECT_EQ(a.num_free_blocks(), 0);
  EXPECT_THROW(a.allocate(), std::runtime_error);
  EXPECT_FALSE(a.can_allocate(1));
  a.check_invariants();
}

TEST(BlockAllocator, CpuPool) {
  BlockAllocator a(8, 2, 2, false);
  int32_t c = a.allocate_cpu();
  a.incref_cpu(c);
  EXPECT_EQ(a.cpu_ref_count(c), 2);
  EXPECT_DOUBLE_EQ(a.cpu_usage(), 0.5);
  a.decref_cpu(c);
  a.decref_cpu(c);
  EXPECT_EQ(a.num_free_cpu_blocks(), 2);
  a.allocate_cpu();
  a.allocate_cpu();
  EXPECT_THROW(a.allocate_cpu(), std::runtime_error);
  a.check_invariants();
}

TEST(BlockAllocator, PrefixCacheRegisterLookupAndVerify) {
  BlockAllocator a(8, 4, 0, true);
  auto t = toks(100, 8);
  uint64_t h = llmcore::hash_block_tokens(llmcore::kRootBlockHash, t.data(), 8, 0);
  int32_t b = a.allocate();
  EXPECT_TRUE(a.register_block(b, h, llmcore::kRootBlockHash, 0, t.data()));
  EXPECT_FALSE(a.register_block(b, h, llmcore::kRootBlockHash, 0, t.data()));
  EXPECT_EQ(a.lookup(h, llmcore::kRootBlockHash, 0, t.data()), b);
  // Same hash but other tokens (a forced collision) must never hit.
  auto other = toks(200, 8);
  EXPECT_EQ(a.lookup(h, llmcore::kRootBlockHash, 0, other.data()), -1);
  // Extra key mismatch (e.g. another LoRA) must not hit either.
  EXPECT_EQ(a.lookup(h, llmcore::kRootBlockHash, 7, t.data()), -1);
  // A second block with the same hash is not registered.
  int32_t b2 = a.allocate();
  EXPECT_FALSE(a.register_block(b2, h, llmcore::kRootBlockHash, 0, t.data()));
  a.decref(b2);
  a.decref(b);
  EXPECT_TRUE(a.is_evictable(b));
  EXPECT_EQ(a.num_free_blocks(), 4);
  EXPECT_DOUBLE_EQ(a.usage(), 0.0);
  EXPECT_EQ(a.lookup(h, llmcore::kRootBlockHash, 0, t.data()), b);
  a.incref(b);  // revive from the evictable list
  EXPECT_FALSE(a.is_evictable(b));
  EXPECT_EQ(a.ref_count(b), 1);
  a.decref(b);
  a.check_invariants();
}

TEST(BlockAllocator, PlainFreeBlocksBeforeEvictionAndLruOrder) {
  BlockAllocator a(8, 3, 0, true);
  std::vector<std::vector<int32_t>> t = {toks(0, 8), toks(10, 8), toks(20, 8)};
  std::vector<int32_t> b(3);
  std::vector<uint64_t> h(3);
  for (int i = 0; i < 3; ++i) {
    b[i] = a.allocate();
    h[i] = llmcore::hash_block_tokens(llmcore::kRootBlockHash, t[i].data(), 8, 0);
  }
  a.register_block(b[0], h[0], llmcore::kRootBlockHash, 0, t[0].data());
  a.register_block(b[1], h[1], llmcore::kRootBlockHash, 0, t[1].data());
  // Free order: b1 first (oldest), then b2 (plain), then b0.
  a.decref(b[1]);
  a.decref(b[2]);
  a.decref(b[0]);
  EXPECT_EQ(a.num_evictable_blocks(), 2);
  EXPECT_EQ(a.allocate(), b[2]);  // plain free block first
  EXPECT_EQ(a.allocate(), b[1]);  // then least recently freed cached block
  EXPECT_EQ(a.lookup(h[1], llmcore::kRootBlockHash, 0, t[1].data()), -1);
  EXPECT_EQ(a.lookup(h[0], llmcore::kRootBlockHash, 0, t[0].data()), b[0]);
  a.check_invariants();
  a.reset_prefix_cache();
  EXPECT_EQ(a.lookup(h[0], llmcore::kRootBlockHash, 0, t[0].data()), -1);
  a.check_invariants();
}

TEST(BlockAllocator, NoHashingWhenCachingOff) {
  BlockAllocator a(16, 2, 0, false);
  auto t = toks(0, 16);
  int32_t b = a.allocate();
  EXPECT_FALSE(a.register_block(b, 1, 2, 0, t.data()));
  EXPECT_EQ(a.lookup(1, 2, 0, t.data()), -1);
  EXPECT_FALSE(a.is_cached(b));
  a.decref(b);
  a.check_invariants();
}

TEST(BlockHash, ChainsAndExtraKey) {
  auto t = toks(0, 16);
  uint64_t a = llmcore::hash_block_tokens(1, t.data(), 16, 0);
  EXPECT_EQ(a, llmcore::hash_block_tokens(1, t.data(), 16, 0));
  EXPECT_NE(a, llmcore::hash_block_tokens(2, t.data(), 16, 0));
  EXPECT_NE(a, llmcore::hash_block_tokens(1, t.data(), 16, 1));
  t[15] = 99;
  EXPECT_NE(a, llmcore::hash_block_tokens(1, t.data(), 16, 0));
}

#include <random>
#include <unordered_map>

#include "llmcore/block_hash_map.h"

TEST(BlockHashMap, MatchesUnorderedMapUnderRandomInsertErase) {
  llmcore::BlockHashMap m;
  m.init(64);
  std::unordered_map<uint64_t, int32_t> ref;
  std::mt19937_64 rng(3);
  std::vector<uint64_t> keys;
  for (int i = 0; i < 200; ++i) keys.push_back(rng() % 7 == 0 ? i : rng());  // some clustered
  for (int step = 0; step < 20000; ++step) {
    const uint64_t k = keys[rng() % keys.size()];
    const int32_t v = static_cast<int32_t>(rng() % 1000);
    if (rng() % 2 && ref.size() < 64) {
      const bool fresh = ref.emplace(k, v).second;
      ASSERT_EQ(m.insert(k, v), fresh);
    } else {
      auto it = ref.find(k);
      const int32_t cur = it == ref.end() ? -1 : it->second;
      const int32_t given = rng() % 4 == 0 ? v : cur;  // sometimes a wrong value: no-op
      m.erase(k, given);
      if (it != ref.end() && given == cur) ref.erase(it);
    }
    ASSERT_EQ(m.size(), ref.size());
    for (const auto& kv : ref) ASSERT_EQ(m.find(kv.first), kv.second);
  }
}
