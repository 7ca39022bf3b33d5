#include "llmcore/cpu_attention.h"

#include <atomic>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) || defined(__SSE__)
#include <xmmintrin.h>
#define LLMCORE_HAVE_MXCSR 1
#endif

namespace llmcore {
namespace {

struct Args {
  const float* q;
  int64_t q_stride;
  const float* key_cache;
  const float* value_cache;
  const int32_t* block_tables;
  const int32_t* seq_lens;
  int num_heads, num_kv_heads, head_dim, block_size, max_blocks;
  float scale;
  int sliding_window;
  float* out;
  int64_t out_stride;
};

namespace generic {
#include "cpu_attention_kernel.inc"
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
#include "cpu_attention_kernel.inc"
}  // namespace avx2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

using ItemsFn = void (*)(const Args&, std::atomic<int>*, int);

// Runs fn with denormals flushed to zero (FTZ+DAZ) on this thread: tiny cache values or
// softmax weights would otherwise take the ~100x slower denormal path.
void run_ftz(ItemsFn fn, const Args& a, std::atomic<int>* next, int total) {
#ifdef LLMCORE_HAVE_MXCSR
  const unsigned csr = _mm_getcsr();
  _mm_setcsr(csr | 0x8040u);
  fn(a, next, total);
  _mm_setcsr(csr);
#else
  fn(a, next, total);
#endif
}

ItemsFn pick() {
#ifdef LLMCORE_HAVE_AVX2_PATH
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (has) return &avx2::run_items;
#endif
  return &generic::run_items;
}

}  // namespace

const char* paged_decode_attention_isa() {
  return pick() == &generic::run_items ? "generic" : "avx2";
}

void paged_decode_attention_f32(const float* q, int64_t q_stride, const float* key_cache,
                                const float* value_cache, const int32_t* block_tables,
                                const int32_t* seq_lens, int num_seqs, int num_heads,
                                int num_kv_heads, int head_dim, int block_size,
                                int max_blocks, float scale, int sliding_window, float* out,
                                int64_t out_stride, int num_threads) {
  if (num_seqs <= 0) return;
  if (num_kv_heads <= 0 || num_heads % num_kv_heads != 0)
    throw std::invalid_argument("num_heads must be a multiple of num_kv_heads");
  if (head_dim <= 0) throw std::invalid_argument("head_dim must be positive");
  if (block_size <= 0) throw std::invalid_argument("block_size must be positive");
  for (int b = 0; b < num_seqs; ++b) {
    const int64_t need = (static_cast<int64_t>(seq_lens[b]) + block_size - 1) / block_size;
    if (need > max_blocks)
      throw std::invalid_argument("seq_len " + std::to_string(seq_lens[b]) +
                                  " needs more blocks than block_tables has columns");
  }
  const Args a{q, q_stride, key_cache, value_cache, block_tables, seq_lens,
               num_heads, num_kv_heads, head_dim, block_size, max_blocks,
               scale, sliding_window, out, out_stride};
  const int total = num_seqs;  // one work item per sequence (all its heads)
#ifdef _OPENMP
  const int hw = omp_get_max_threads();
#else
  const int hw = static_cast<int>(std::thread::hardware_concurrency());
#endif
  int nt = num_threads > 0 ? num_threads : hw;
  if (nt < 1) nt = 1;
  if (nt > total) nt = total;
  ItemsFn fn = pick();
  std::atomic<int> next{0};
  if (nt == 1) {
    run_ftz(fn, a, &next, total);
    return;
  }
#ifdef _OPENMP
  // OpenMP rather than std::thread: in a process that runs torch this is torch's own
  // libgomp pool (one runtime per soname), whose workers are still spinning right after
  // a GEMM; threads of our own would compete with them for the same cores.
#pragma omp parallel num_threads(nt)
  run_ftz(fn, a, &next, total);
#else
  std::vector<std::thread> ts;
  ts.reserve(nt - 1);
  for (int i = 1; i < nt; ++i) ts.emplace_back(run_ftz, fn, std::cref(a), &next, total);
  run_ftz(fn, a, &next, total);
  for (auto& t : ts) t.join();
#endif
}

}  // namespace llmcore
