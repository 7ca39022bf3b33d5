#pragma once
#include "llmcore_cuda/common.h"
namespace llmcore {
// out[t, i] = silu(x[t, i]) * x[t, d + i]; x: [num_tokens, 2d] (row stride x_stride), out [num_tokens, d].
cudaError_t silu_and_mul(void* out, int64_t out_stride, const void* x, int64_t x_stride,
                         int num_tokens, int d, int dtype, cudaStream_t stream);
}  // namespace llmcore
