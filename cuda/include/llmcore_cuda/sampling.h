#pragma once
#include "llmcore_cuda/common.h"
namespace llmcore {
// Greedy: out[b] = argmax(logits[b]) (lowest index on ties). logits [batch, vocab], row stride.
cudaError_t argmax(int64_t* out, const void* logits, int64_t logits_stride, int batch, int vocab,
                   int dtype, cudaStream_t stream);
// Per-row sampling: temperature (<= 0: greedy), top_k (<= 0 or >= vocab: off), top_p (>= 1: off),
// min_p (<= 0: off); each may be null (= off, temperature null = 1). Order: top-k, then top-p on
// the top-k renormalised distribution, then min-p (relative to the max probability); ties at a
// threshold are kept. The token is drawn by inverse CDF over the kept set in vocabulary order
// with u = uniform[b] if uniform != null, else u = llmcore_uniform(seed, offset, b).
cudaError_t sample(int64_t* out, const void* logits, int64_t logits_stride, int batch, int vocab,
                   int dtype, const float* temperature, const int* top_k, const float* top_p,
                   const float* min_p, const float* uniform, uint64_t seed, uint64_t offset,
                   cudaStream_t stream);
}  // namespace llmcore
