// RMSNorm and fused residual-add + RMSNorm.
#include "llmcore_cuda/norm.h"

namespace llmcore {
namespace {

template <typename T>
__global__ void rms_norm_kernel(T* __restrict__ out, int64_t out_stride, const T* __restrict__ x,
                                int64_t x_stride, const T* __restrict__ w, float eps, int hidden) {
  __shared__ float red[32];
  const T* xr = x + (int64_t)blockIdx.x * x_stride;
  T* orow = out + (int64_t)blockIdx.x * out_stride;
  float ss = 0.f;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float v = to_float<T>(xr[i]);
    ss += v * v;
  }
  ss = block_sum(ss, red);
  const float r = rsqrtf(ss / hidden + eps);
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float n = to_float<T>(from_float<T>(to_float<T>(xr[i]) * r));
    orow[i] = from_float<T>(n * to_float<T>(w[i]));
  }
}

template <typename T>
__global__ void fused_add_rms_norm_kernel(T* __restrict__ x, int64_t x_stride, T* __restrict__ res,
                                          int64_t res_stride, const T* __restrict__ w, float eps,
                                          int hidden) {
  __shared__ float red[32];
  T* xr = x + (int64_t)blockIdx.x * x_stride;
  T* rr = res + (int64_t)blockIdx.x * res_stride;
  float ss = 0.f;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    const T z = from_float<T>(to_float<T>(xr[i]) + to_float<T>(rr[i]));
    rr[i] = z;
    const float v = to_float<T>(z);
    ss += v * v;
  }
  ss = block_sum(ss, red);
  const float r = rsqrtf(ss / hidden + eps);
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {  // same thread re-reads its own writes
    const float n = to_float<T>(from_float<T>(to_float<T>(rr[i]) * r));
    xr[i] = from_float<T>(n * to_float<T>(w[i]));
  }
}

int threads_for(int hidden) {
  int t = ((hidden + 3) / 4 + 31) / 32 * 32;
  if (t < 64) t = 64;
  if (t > 1024) t = 1024;
  return t;
}

}  // namespace

cudaError_t rms_norm(void* out, int64_t out_stride, const void* x, int64_t x_stride,
                     const void* weight, float eps, int num_tokens, int hidden, int dtype,
                     cudaStream_t stream) {
  if (num_tokens <= 0) return cudaSuccess;
  LLMCORE_DISPATCH_FLOAT(dtype, {
    rms_norm_kernel<scalar_t><<<num_tokens, threads_for(hidden), 0, stream>>>(
        (scalar_t*)out, out_stride, (const scalar_t*)x, x_stride, (const scalar_t*)weight, eps,
        hidden);
  });
  return cudaGetLastError();
}

cudaError_t fused_add_rms_norm(void* x, int64_t x_stride, void* residual, int64_t residual_stride,
                               const void* weight, float eps, int num_tokens, int hidden,
                               int dtype, cudaStream_t stream) {
  if (num_tokens <= 0) return cudaSuccess;
  LLMCORE_DISPATCH_FLOAT(dtype, {
    fused_add_rms_norm_kernel<scalar_t><<<num_tokens, threads_for(hidden), 0, stream>>>(
        (scalar_t*)x, x_stride, (scalar_t*)residual, residual_stride, (const scalar_t*)weight, eps,
        hidden);
  });
  return cudaGetLastError();
}

}  // namespace llmcore
