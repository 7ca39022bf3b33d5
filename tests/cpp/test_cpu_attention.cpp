#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "llmcore/cpu_attention.h"

namespace {

struct Case {
  int num_seqs, num_heads, num_kv_heads, head_dim, block_size, sliding_window;
  std::vector<int32_t> lens;
};

// naive double-precision reference
void reference(const Case& c, const std::vector<float>& q, const std::vector<float>& kc,
               const std::vector<float>& vc, const std::vector<int32_t>& bt, int max_blocks,
               float scale, std::vector<double>& out) {
  const int H = c.num_heads, KV = c.num_kv_heads, D = c.head_dim, bs = c.block_size;
  out.assign(static_cast<size_t>(c.num_seqs) * H * D, 0.0);
  for (int b = 0; b < c.num_seqs; ++b) {
    const int len = c.lens[b];
    const int start = c.sliding_window > 0 ? std::max(0, len - c.sliding_window) : 0;
    for (int h = 0; h < H; ++h) {
      const int kh = h / (H / KV);
      std::vector<double> sc;
      for (int t = start; t < len; ++t) {
        const int64_t row = static_cast<int64_t>(bt[b * max_blocks + t / bs]) * bs + t % bs;
        double s = 0;
        for (int i = 0; i < D; ++i)
          s += double(q[(b * H + h) * D + i]) * kc[(row * KV + kh) * D + i];
        sc.push_back(s * scale);
      }
      const double mx = *std::max_element(sc.begin(), sc.end());
      double sum = 0;
      for (double& s : sc) sum += (s = std::exp(s - mx));
      for (int t = start; t < len; ++t) {
        const int64_t row = static_cast<int64_t>(bt[b * max_blocks + t / bs]) * bs + t % bs;
        for (int i = 0; i < D; ++i)
          out[(b * H + h) * D + i] += sc[t - start] / sum * vc[(row * KV + kh) * D + i];
      }
    }
  }
}

void run_case(const Case& c, int num_threads, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  const int H = c.num_heads, KV = c.num_kv_heads, D = c.head_dim, bs = c.block_size;
  int max_blocks = 0;
  for (int l : c.lens) max_blocks = std::max(max_blocks, (l + bs - 1) / bs);
  max_blocks += 1;  // spare column
  const int num_blocks = c.num_seqs * max_blocks + 3;
  std::vector<int32_t> perm(num_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);  // scrambled block tables
  std::vector<int32_t> bt(static_cast<size_t>(c.num_seqs) * max_blocks);
  for (size_t i = 0; i < bt.size(); ++i) bt[i] = perm[i];
  std::vector<float> kc(static_cast<size_t>(num_blocks) * bs * KV * D),
      vc(kc.size()), q(static_cast<size_t>(c.num_seqs) * H * D);
  for (auto& x : kc) x = nd(rng);
  for (auto& x : vc) x = nd(rng);
  for (auto& x : q) x = 2.f * nd(rng);
  const float scale = 1.0f / std::sqrt(float(D));
  // strided q / out: pad rows by 5 floats to check the strides
  const int64_t qs = int64_t(H) * D + 5, os = int64_t(H) * D + 3;
  std::vector<float> qp(c.num_seqs * qs, NAN), out(c.num_seqs * os, NAN);
  for (int b = 0; b < c.num_seqs; ++b)
    std::copy(q.begin() + b * H * D, q.begin() + (b + 1) * H * D, qp.begin() + b * qs);
  llmcore::paged_decode_attention_f32(qp.data(), qs, kc.data(), vc.data(), bt.data(),
                                      c.lens.data(), c.num_seqs, H, KV, D, bs, max_blocks,
                                      scale, c.sliding_window, out.data(), os, num_threads);
  std::vector<double> ref;
  reference(c, q, kc, vc, bt, max_blocks, scale, ref);
  for (int b = 0; b < c.num_seqs; ++b)
    for (int i = 0; i < H * D; ++i)
      ASSERT_NEAR(out[b * os + i], ref[b * H * D + i], 2e-5 * (1 + std::abs(ref[b * H * D + i])))
          << "seq " << b << " elem " << i << " bs " << bs << " D " << D;
  // batch invariance: each sequence alone gives bit-identical results
  for (int b = 0; b < c.num_seqs; ++b) {
    std::vector<float> o1(H * D);
    llmcore::paged_decode_attention_f32(qp.data() + b * qs, qs, kc.data(), vc.data(),
                                        bt.data() + b * max_blocks, &c.lens[b], 1, H, KV, D,
                                        bs, max_blocks, scale, c.sliding_window, o1.data(),
                                        H * D, 1);
    for (int i = 0; i < H * D; ++i) ASSERT_EQ(o1[i], out[b * os + i]) << "seq " << b;
  }
}

TEST(CpuAttention, GqaBlockSizesRaggedLengths) {
  for (int bs : {8, 16, 32}) {
    Case c{7, 9, 3, 64, bs, -1, {1, 2, 17, 64, 100, 255, 33}};
    run_case(c, 2, 1 + bs);
  }
}

TEST(CpuAttention, HeadDims) {
  for (int D : {32, 128, 40}) {
    Case c{4, 8, 2, D, 16, -1, {1, 31, 77, 130}};
    run_case(c, 3, 7 + D);
  }
  Case mha{3, 4, 4, 64, 16, -1, {5, 16, 200}};
  run_case(mha, 0, 5);
}

TEST(CpuAttention, SlidingWindow) {
  for (int bs : {8, 16, 32}) {
    Case c{5, 9, 3, 64, bs, 20, {1, 20, 21, 90, 150}};
    run_case(c, 2, 11 + bs);
  }
}

TEST(CpuAttention, BlockLargerThanChunk) {
  Case c{3, 6, 2, 64, 64, -1, {70, 128, 129}};
  run_case(c, 1, 3);
}

TEST(CpuAttention, Isa) {
  const std::string isa = llmcore::paged_decode_attention_isa();
  EXPECT_TRUE(isa == "avx2" || isa == "generic");
}

}  // namespace
