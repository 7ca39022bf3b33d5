#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "llmcore/cpu_sampling.h"

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The reference in double: softmax, then the first token whose cumulative mass exceeds u.
int64_t reference_draw(const float* x, int n, float u, double* lse) {
  double m = -INFINITY;
  for (int i = 0; i < n; ++i) m = std::max(m, static_cast<double>(x[i]));
  double total = 0;
  for (int i = 0; i < n; ++i) total += std::exp(x[i] - m);
  *lse = m + std::log(total);
  double cum = 0, target = std::min(static_cast<double>(u), 1.0 - 1e-6) * total;
  for (int i = 0; i < n; ++i) {
    const double p = std::exp(x[i] - m);
    cum += p;
    if (cum > target && p > 0) return i;
  }
  return n - 1;
}

struct Case {
  int vocab, rows, stride_pad;
  bool indexed;
  float masked_fraction;  // share of tokens set to -inf (a grammar mask)
};

class InverseCdf : public ::testing::TestWithParam<Case> {};

TEST_P(InverseCdf, MatchesTheDoubleReference) {
  const Case c = GetParam();
  const int total_rows = c.rows + (c.indexed ? 2 : 0);
  const int64_t stride = c.vocab + c.stride_pad;
  std::mt19937 rng(77 + c.vocab);
  std::normal_distribution<float> g(0.f, 3.f);
  std::uniform_real_distribution<float> uni(0.f, 1.f);
  std::vector<float> logits(total_rows * stride);
  for (auto& x : logits) x = uni(rng) < c.masked_fraction ? kNegInf : g(rng);
  for (int r = 0; r < total_rows; ++r) logits[r * stride + r % c.vocab] = 1.0f;  // one allowed
  std::vector<int64_t> rows;
  for (int i = 0; i < c.rows; ++i) rows.push_back(c.indexed ? total_rows - 1 - i : i);
  std::vector<float> u(c.rows);
  for (auto& x : u) x = uni(rng);
  std::vector<int64_t> tok(c.rows, -1);
  std::vector<float> lse(c.rows);
  llmcore::sample_inverse_cdf_f32(logits.data(), stride, c.indexed ? rows.data() : nullptr,
                                  c.rows, c.vocab, u.data(), tok.data(), lse.data(), 2);
  int mismatched = 0;
  for (int i = 0; i < c.rows; ++i) {
    const float* x = logits.data() + rows[i] * stride;
    double ref_lse;
    const int64_t ref = reference_draw(x, c.vocab, u[i], &ref_lse);
    ASSERT_GE(tok[i], 0);
    ASSERT_LT(tok[i], c.vocab);
    EXPECT_NE(x[tok[i]], kNegInf) << "drew a masked token";
    EXPECT_NEAR(lse[i], ref_lse, 1e-4 * std::max(1.0, std::fabs(ref_lse)));
    // fp32 sums may put a boundary one token off; the draw itself must agree nearly always
    if (tok[i] != ref) ++mismatched;
  }
  EXPECT_LE(mismatched, std::max(1, c.rows / 16));
}

INSTANTIATE_TEST_SUITE_P(Shapes, InverseCdf,
                         ::testing::Values(Case{1, 3, 0, false, 0.f}, Case{7, 5, 3, false, 0.f},
                                           Case{1000, 16, 0, false, 0.f},
                                           Case{49152, 8, 0, false, 0.f},
                                           Case{49152, 8, 5, true, 0.99f},
                                           Case{32000, 9, 0, true, 0.5f},
                                           Case{300000, 2, 0, false, 0.f}));

TEST(InverseCdf, FollowsTheDistribution) {
  // three tokens with probabilities 0.5, 0.3, 0.2 (one masked token between them)
  const std::vector<float> x = {std::log(0.5f), kNegInf, std::log(0.3f), std::log(0.2f)};
  const int n = 20000;
  std::vector<float> logits;
  for (int i = 0; i < n; ++i) logits.insert(logits.end(), x.begin(), x.end());
  std::vector<float> u(n);
  for (int i = 0; i < n; ++i) u[i] = (i + 0.5f) / n;  // evenly spread uniforms
  std::vector<int64_t> tok(n);
  llmcore::sample_inverse_cdf_f32(logits.data(), 4, nullptr, n, 4, u.data(), tok.data(), nullptr, 2);
  int count[4] = {0, 0, 0, 0};
  for (auto t : tok) ++count[t];
  EXPECT_EQ(count[1], 0);
  EXPECT_NEAR(count[0] / double(n), 0.5, 1e-3);
  EXPECT_NEAR(count[2] / double(n), 0.3, 1e-3);
  EXPECT_NEAR(count[3] / double(n), 0.2, 1e-3);
}

TEST(InverseCdf, RowWithoutAnAllowedTokenDrawsTheLastWithLseMinusInf) {
  std::vector<float> x(10, kNegInf);
  float u = 0.3f, lse = 0.f;
  int64_t tok = -1;
  llmcore::sample_inverse_cdf_f32(x.data(), 10, nullptr, 1, 10, &u, &tok, &lse, 1);
  EXPECT_EQ(tok, 9);
  EXPECT_EQ(lse, kNegInf);
}

TEST(InverseCdf, UOfOneNeverRunsPastTheLastAllowedToken) {
  std::vector<float> x = {0.f, 0.f, kNegInf, kNegInf};
  float u = 1.0f;
  int64_t tok = -1;
  llmcore::sample_inverse_cdf_f32(x.data(), 4, nullptr, 1, 4, &u, &tok, nullptr, 1);
  EXPECT_EQ(tok, 1);
}

}  // namespace
