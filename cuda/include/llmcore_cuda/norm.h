#pragma once
#include "llmcore_cuda/common.h"
namespace llmcore {
// out[t] = rmsnorm(x[t]) * weight; rows of `hidden` elements with strides (elements).
cudaError_t rms_norm(void* out, int64_t out_stride, const void* x, int64_t x_stride,
                     const void* weight, float eps, int num_tokens, int hidden, int dtype,
                     cudaStream_t stream);
// In place: residual = x + residual (rounded to dtype); x = rmsnorm(residual) * weight.
cudaError_t fused_add_rms_norm(void* x, int64_t x_stride, void* residual, int64_t residual_stride,
                               const void* weight, float eps, int num_tokens, int hidden,
                               int dtype, cudaStream_t stream);
}  // namespace llmcore
