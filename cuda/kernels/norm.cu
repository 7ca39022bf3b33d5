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

// Vectorised fused add + RMSNorm: each thread keeps its ITEMS x VEC elements of the row in
// registers between the two passes (no re-read of the residual) and loads 16 bytes at a
// time. Needs hidden % VEC == 0 and 16-byte aligned rows; the same rounding steps as above.
template <typename T, int VEC, int ITEMS>
__global__ void fused_add_rms_norm_vec_kernel(T* __restrict__ x, int64_t x_stride,
                                              T* __restrict__ res, int64_t res_stride,
                                              const T* __restrict__ w, float eps, int hidden) {
  using VT = typename VecBytes<sizeof(T) * VEC>::type;
  union Pack { VT raw; T v[VEC]; };
  __shared__ float red[32];
  T* xr = x + (int64_t)blockIdx.x * x_stride;
  T* rr = res + (int64_t)blockIdx.x * res_stride;
  float z[ITEMS][VEC];
  float ss = 0.f;
#pragma unroll
  for (int it = 0; it < ITEMS; ++it) {
    const int i = (it * blockDim.x + threadIdx.x) * VEC;
    if (i < hidden) {
      Pack a, b, o;
      a.raw = *reinterpret_cast<const VT*>(xr + i);
      b.raw = *reinterpret_cast<const VT*>(rr + i);
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        o.v[v] = from_float<T>(to_float<T>(a.v[v]) + to_float<T>(b.v[v]));
        z[it][v] = to_float<T>(o.v[v]);
        ss += z[it][v] * z[it][v];
      }
      *reinterpret_cast<VT*>(rr + i) = o.raw;
    }
  }
  ss = block_sum(ss, red);
  const float r = rsqrtf(ss / hidden + eps);
#pragma unroll
  for (int it = 0; it < ITEMS; ++it) {
    const int i = (it * blockDim.x + threadIdx.x) * VEC;
    if (i < hidden) {
      Pack g, o;
      g.raw = *reinterpret_cast<const VT*>(w + i);
#pragma unroll
      for (int v = 0; v < VEC; ++v)
        o.v[v] = from_float<T>(to_float<T>(from_float<T>(z[it][v] * r)) * to_float<T>(g.v[v]));
      *reinterpret_cast<VT*>(xr + i) = o.raw;
    }
  }
}

template <typename T>
bool launch_fused_add_rms_norm_vec(T* x, int64_t x_stride, T* res, int64_t res_stride,
                                   const T* w, float eps, int num_tokens, int hidden,
                                   cudaStream_t stream) {
  constexpr int VEC = 16 / sizeof(T);
  const auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  if (hidden % VEC || x_stride % VEC || res_stride % VEC || !aligned(x) || !aligned(res) ||
      !aligned(w))
    return false;
  const int vecs = hidden / VEC;
  const auto threads = [](int n) { return ((n + 31) / 32) * 32 < 64 ? 64 : ((n + 31) / 32) * 32; };
  if (vecs <= 1024) {
    fused_add_rms_norm_vec_kernel<T, VEC, 1><<<num_tokens, threads(vecs), 0, stream>>>(
        x, x_stride, res, res_stride, w, eps, hidden);
  } else if (vecs <= 2048) {
    fused_add_rms_norm_vec_kernel<T, VEC, 2><<<num_tokens, threads((vecs + 1) / 2), 0, stream>>>(
        x, x_stride, res, res_stride, w, eps, hidden);
  } else if (vecs <= 4096) {
    fused_add_rms_norm_vec_kernel<T, VEC, 4><<<num_tokens, threads((vecs + 3) / 4), 0, stream>>>(
        x, x_stride, res, res_stride, w, eps, hidden);
  } else {
    return false;
  }
  return true;
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
    if (launch_fused_add_rms_norm_vec<scalar_t>((scalar_t*)x, x_stride, (scalar_t*)residual,
                                                residual_stride, (const scalar_t*)weight, eps,
                                                num_tokens, hidden, stream))
      return cudaGetLastError();
    fused_add_rms_norm_kernel<scalar_t><<<num_tokens, threads_for(hidden), 0, stream>>>(
        (scalar_t*)x, x_stride, (scalar_t*)residual, residual_stride, (const scalar_t*)weight, eps,
        hidden);
  });
  return cudaGetLastError();
}

}  // namespace llmcore
