#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "llmcore/cpu_token_bitmask.h"

namespace {

// The reference: bit by bit, no word skipping.
void reference(std::vector<float>& logits, int64_t stride, const std::vector<int32_t>& mask,
               int words, const std::vector<int64_t>* rows, int vocab) {
  const int n = static_cast<int>(mask.size() / words);
  for (int i = 0; i < n; ++i) {
    const int64_t r = rows ? (*rows)[i] : i;
    for (int t = 0; t < vocab; ++t) {
      const int w = t / 32;
      const bool allowed = w < words && ((static_cast<uint32_t>(mask[i * words + w]) >> (t % 32)) & 1u);
      if (!allowed) logits[r * stride + t] = -INFINITY;
    }
  }
}

struct Case {
  int vocab, words, rows, stride_pad;
  bool indexed;
};

class TokenBitmask : public ::testing::TestWithParam<Case> {};

TEST_P(TokenBitmask, MatchesBitByBitReference) {
  const Case c = GetParam();
  const int total_rows = c.rows + (c.indexed ? 3 : 0);
  const int64_t stride = c.vocab + c.stride_pad;
  std::mt19937 rng(1234 + c.vocab);
  std::uniform_real_distribution<float> u(-4.f, 4.f);
  std::vector<float> logits(total_rows * stride);
  for (auto& x : logits) x = u(rng);
  std::vector<int32_t> mask(c.rows * c.words);
  for (size_t i = 0; i < mask.size(); ++i) {
    const int kind = static_cast<int>(rng() % 4);  // all-ones, zero and mixed words
    mask[i] = kind == 0 ? -1 : kind == 1 ? 0 : static_cast<int32_t>(rng());
  }
  std::vector<int64_t> rows;
  for (int i = 0; i < c.rows; ++i) rows.push_back((total_rows - 1 - 2 * i + 4 * total_rows) % total_rows);
  std::vector<float> expect = logits;
  reference(expect, stride, mask, c.words, c.indexed ? &rows : nullptr, c.vocab);
  llmcore::apply_token_bitmask_f32(logits.data(), stride, mask.data(), c.words,
                                   c.indexed ? rows.data() : nullptr, c.rows, c.vocab, 2);
  for (size_t i = 0; i < logits.size(); ++i) {
    if (std::isinf(expect[i])) {
      ASSERT_TRUE(std::isinf(logits[i]) && logits[i] < 0) << "element " << i;
    } else {
      ASSERT_EQ(expect[i], logits[i]) << "element " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, TokenBitmask,
    ::testing::Values(Case{64, 2, 1, 0, false}, Case{70, 3, 4, 5, false},
                      Case{70, 2, 4, 0, false},  // mask narrower than the vocab: tail disallowed
                      Case{1000, 32, 9, 7, true}, Case{49152, 1536, 16, 0, true}));

}  // namespace
