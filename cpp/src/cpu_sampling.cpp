#include "llmcore/cpu_sampling.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace llmcore {
namespace {

namespace generic {
#include "cpu_sampling_kernel.inc"
}  // namespace generic

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LLMCORE_HAVE_AVX2_PATH 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
namespace avx2 {
#include "cpu_sampling_kernel.inc"
}  // namespace avx2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

using RowsFn = void (*)(const float*, int64_t, const int64_t*, int, int, const float*, int64_t*,
                        float*, int);

RowsFn pick() {
#ifdef LLMCORE_HAVE_AVX2_PATH
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (has) return &avx2::run_rows;
#endif
  return &generic::run_rows;
}

}  // namespace

const char* sample_inverse_cdf_isa() { return pick() == &generic::run_rows ? "generic" : "avx2"; }

void sample_inverse_cdf_f32(const float* logits, int64_t logits_stride, const int64_t* rows,
                            int num_rows, int vocab, const float* u, int64_t* out_tokens,
                            float* out_lse, int num_threads) {
  if (num_rows <= 0) return;
  if (vocab <= 0) throw std::invalid_argument("vocab must be positive");
  if (logits == nullptr || u == nullptr || out_tokens == nullptr)
    throw std::invalid_argument("null logits, uniforms or output");
#ifdef _OPENMP
  const int threads = num_threads > 0 ? num_threads : omp_get_max_threads();
#else
  const int threads = 1;
  (void)num_threads;
#endif
  pick()(logits, logits_stride, rows, num_rows, vocab, u, out_tokens, out_lse, threads);
}

}  // namespace llmcore
