// Chained hash of a full KV block: hash(parent hash, token ids, extra key).
#pragma once

#include <cstdint>
#include <cstring>

namespace llmcore {

// Hash used as the "parent" of the first block of every sequence.
constexpr uint64_t kRootBlockHash = 0x243F6A8885A308D3ULL;

inline uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

// xxh64-style round over pairs of tokens; collisions are harmless for
// correctness because cached blocks are verified token by token on a hit.
inline uint64_t hash_block_tokens(uint64_t parent, const int32_t* tokens, int n,
                                  uint64_t extra_key) {
  constexpr uint64_t k1 = 0x9E3779B185EBCA87ULL;
  constexpr uint64_t k2 = 0xC2B2AE3D27D4EB4FULL;
  uint64_t h = mix64(parent ^ k1) ^ mix64(extra_key + k2);
  int i = 0;
  for (; i + 1 < n; i += 2) {
    uint64_t w = static_cast<uint32_t>(tokens[i]) |
                 (static_cast<uint64_t>(static_cast<uint32_t>(tokens[i + 1])) << 32);
    h ^= rotl64(w * k2, 31) * k1;
    h = rotl64(h, 27) * k1 + 0x85EBCA77C2B2AE63ULL;
  }
  if (i < n) {
    h ^= static_cast<uint64_t>(static_cast<uint32_t>(tokens[i])) * k1;
    h = rotl64(h, 23) * k2;
  }
  return mix64(h ^ static_cast<uint64_t>(n));
}

}  // namespace llmcore
