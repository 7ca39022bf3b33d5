#include "llmcore/cpu_token_bitmask.h"

#include <algorithm>
#include <limits>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace llmcore {

namespace {
void apply_row(float* row, const int32_t* mask, int words, int vocab) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const int needed = (vocab + 31) / 32;
  for (int w = 0; w < needed; ++w) {
    const uint32_t bits = w < words ? static_cast<uint32_t>(mask[w]) : 0u;
    if (bits == 0xffffffffu) continue;
    float* p = row + static_cast<int64_t>(w) * 32;
    const int n = std::min(32, vocab - w * 32);
    if (bits == 0u) {
      std::fill(p, p + n, kNegInf);
      continue;
    }
    for (int b = 0; b < n; ++b)
      if (!((bits >> b) & 1u)) p[b] = kNegInf;
  }
}
}  // namespace

void apply_token_bitmask_f32(float* logits, int64_t logits_stride, const int32_t* bitmask,
                             int words, const int64_t* rows, int num_rows, int vocab,
                             int num_threads) {
  if (num_rows <= 0 || vocab <= 0) return;
  // threads pay off only past a few rows: a 49k-token row takes ~10 us
#ifdef _OPENMP
  const int threads = num_threads > 0 ? num_threads : omp_get_max_threads();
#pragma omp parallel for schedule(static) if (num_rows >= 8) num_threads(threads)
#else
  (void)num_threads;
#endif
  for (int i = 0; i < num_rows; ++i) {
    const int64_t r = rows != nullptr ? rows[i] : i;
    apply_row(logits + r * logits_stride, bitmask + static_cast<int64_t>(i) * words, words,
              vocab);
  }
}

}  // namespace llmcore
