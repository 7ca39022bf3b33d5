// SiLU-and-mul (SwiGLU gate): out = silu(x[:, :d]) * x[:, d:].
#include "llmcore_cuda/activation.h"

namespace llmcore {
namespace {

template <typename T>
__global__ void silu_and_mul_kernel(T* __restrict__ out, int64_t out_stride,
                                    const T* __restrict__ x, int64_t x_stride, int d) {
  const T* xr = x + (int64_t)blockIdx.x * x_stride;
  T* orow = out + (int64_t)blockIdx.x * out_stride;
  for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < d; i += gridDim.y * blockDim.x) {
    const float a = to_float<T>(xr[i]);
    const float s = to_float<T>(from_float<T>(a / (1.f + __expf(-a))));  // silu rounded like torch
    orow[i] = from_float<T>(s * to_float<T>(xr[d + i]));
  }
}

}  // namespace

cudaError_t silu_and_mul(void* out, int64_t out_stride, const void* x, int64_t x_stride,
                         int num_tokens, int d, int dtype, cudaStream_t stream) {
  if (num_tokens <= 0 || d <= 0) return cudaSuccess;
  const int threads = 256;
  int gy = (d + threads * 4 - 1) / (threads * 4);
  if (gy > 64) gy = 64;
  const dim3 grid(num_tokens, gy);
  LLMCORE_DISPATCH_FLOAT(dtype, {
    silu_and_mul_kernel<scalar_t><<<grid, threads, 0, stream>>>(
        (scalar_t*)out, out_stride, (const scalar_t*)x, x_stride, d);
  });
  return cudaGetLastError();
}

}  // namespace llmcore
