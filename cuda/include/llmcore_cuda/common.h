// Shared helpers for the llmcore CUDA kernels (also compiled as HIP through
// hip/llmcore_hip_compat.h). No torch headers here: raw pointers only.
#pragma once

#include <stdint.h>

#if defined(LLMCORE_HIP) || defined(__HIP_PLATFORM_AMD__)
#include "llmcore_hip_compat.h"
#else
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#endif

namespace llmcore {
// Element type codes shared with the Python bindings (llmcore.ops._dtype_code).
enum DType : int {
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
  kFp8E4M3 = 3,  // float8_e4m3fn
  kFp8E5M2 = 4,  // float8_e5m2
};
}  // namespace llmcore

#if defined(__CUDACC__) || defined(__HIPCC__)
// Device-side helpers (only for .cu translation units).
// Warp width: 32 on NVIDIA, the wavefront width (64 on CDNA, 32 on RDNA) on AMD.
#ifndef WARP_SIZE
#if defined(LLMCORE_HIP) || defined(__HIP_PLATFORM_AMD__)
#if defined(__AMDGCN_WAVEFRONT_SIZE)
#define WARP_SIZE __AMDGCN_WAVEFRONT_SIZE
#else
#define WARP_SIZE 64
#endif
#else
#define WARP_SIZE 32
#endif
#endif

namespace llmcore {

using half_t = __half;
using bf16_t = __nv_bfloat16;

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<half_t>(half_t v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<bf16_t>(bf16_t v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ half_t from_float<half_t>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ bf16_t from_float<bf16_t>(float v) { return __float2bfloat16_rn(v); }

// ---------------------------------------------------------------------------
// fp8 (OCP e4m3fn / e5m2) <-> float. CUDA uses the cuda_fp8.h intrinsics
// (hardware conversions on sm_89+); HIP uses the exact software versions.
// Encoding saturates to the largest finite value (like __NV_SATFINITE).
// ---------------------------------------------------------------------------
__device__ __forceinline__ float fp8_sw_decode(uint8_t b, bool e4m3) {
  const uint32_t s = b >> 7;
  float v;
  if (e4m3) {
    const int e = (b >> 3) & 0xF, m = b & 0x7;
    if (e == 15 && m == 7) return __int_as_float(0x7fc00000);
    v = e == 0 ? ldexpf((float)m, -9) : ldexpf((float)(8 + m), e - 10);
  } else {
    const int e = (b >> 2) & 0x1F, m = b & 0x3;
    if (e == 31) return m ? __int_as_float(0x7fc00000) : (s ? -INFINITY : INFINITY);
    v = e == 0 ? ldexpf((float)m, -16) : ldexpf((float)(4 + m), e - 17);
  }
  return s ? -v : v;
}

__device__ __forceinline__ uint8_t fp8_sw_encode(float x, bool e4m3) {
  const int mbits = e4m3 ? 3 : 2;
  const int emin = e4m3 ? -6 : -14;  // smallest normal exponent
  const float maxv = e4m3 ? 448.f : 57344.f;
  const int bias = e4m3 ? 7 : 15;
  uint8_t sign = 0;
  if (x != x) return e4m3 ? 0x7f : 0x7f;
  if (x < 0.f) { sign = 0x80; x = -x; }
  if (x > maxv) x = maxv;
  if (x == 0.f) return sign;
  int e;
  frexpf(x, &e);  // x = f * 2^e, f in [0.5, 1)
  e -= 1;         // x = 1.m * 2^e
  if (e < emin) e = emin;
  const float step = ldexpf(1.f, e - mbits);
  float q = rintf(x / step) * step;  // round half to even
  if (q > maxv) q = maxv;
  if (q == 0.f) return sign;
  int qe;
  frexpf(q, &qe);
  qe -= 1;
  uint32_t bits;
  if (qe < emin) {  // subnormal
    bits = (uint32_t)rintf(q / ldexpf(1.f, emin - mbits));
  } else {
    const uint32_t mant = (uint32_t)rintf((q / ldexpf(1.f, qe) - 1.f) * (1 << mbits));
    bits = ((uint32_t)(qe + bias) << mbits) | mant;
  }
  return sign | (uint8_t)bits;
}

template <int KIND> __device__ __forceinline__ float fp8_to_float(uint8_t b) {
#if defined(LLMCORE_HIP) || defined(__HIP_PLATFORM_AMD__)
  return fp8_sw_decode(b, KIND == kFp8E4M3);
#else
  __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)b,
                                         KIND == kFp8E4M3 ? __NV_E4M3 : __NV_E5M2);
  return __half2float(__half(h));
#endif
}

template <int KIND> __device__ __forceinline__ uint8_t float_to_fp8(float x) {
#if defined(LLMCORE_HIP) || defined(__HIP_PLATFORM_AMD__)
  return fp8_sw_encode(x, KIND == kFp8E4M3);
#else
  return (uint8_t)__nv_cvt_float_to_fp8(x, __NV_SATFINITE,
                                        KIND == kFp8E4M3 ? __NV_E4M3 : __NV_E5M2);
#endif
}

// Cache element access: KIND is the cache dtype code; T the activation type.
// For fp8 caches the storage is uint8_t and values are multiplied by `scale`.
template <typename T, int KIND> struct CacheTraits {
  using storage = T;
  static __device__ __forceinline__ float load(const storage* p, float) { return to_float<T>(*p); }
  static __device__ __forceinline__ storage store(float v, float) { return from_float<T>(v); }
};
template <typename T> struct CacheTraits<T, kFp8E4M3> {
  using storage = uint8_t;
  static __device__ __forceinline__ float load(const storage* p, float s) { return fp8_to_float<kFp8E4M3>(*p) * s; }
  static __device__ __forceinline__ storage store(float v, float inv_s) { return float_to_fp8<kFp8E4M3>(v * inv_s); }
};
template <typename T> struct CacheTraits<T, kFp8E5M2> {
  using storage = uint8_t;
  static __device__ __forceinline__ float load(const storage* p, float s) { return fp8_to_float<kFp8E5M2>(*p) * s; }
  static __device__ __forceinline__ storage store(float v, float inv_s) { return float_to_fp8<kFp8E5M2>(v * inv_s); }
};

// A vector of cache elements as floats, unscaled (callers fold the fp8 scale into q and the
// output). fp8 pairs go through one cvt (e4m3x2/e5m2x2 -> f16x2) instead of two.
template <typename T, int KIND, typename S, int N>
__device__ __forceinline__ void cache_to_float(const S (&r)[N], float (&f)[N]) {
  if constexpr (KIND == kFp8E4M3 || KIND == kFp8E5M2) {
#if defined(LLMCORE_HIP) || defined(__HIP_PLATFORM_AMD__)
#pragma unroll
    for (int i = 0; i < N; ++i) f[i] = fp8_to_float<KIND>(r[i]);
#else
    static_assert(N % 2 == 0, "fp8 pairs");
#pragma unroll
    for (int i = 0; i < N; i += 2) {
      const auto pair = (__nv_fp8x2_storage_t)(r[i] | (r[i + 1] << 8));
      const __half2_raw h =
          __nv_cvt_fp8x2_to_halfraw2(pair, KIND == kFp8E4M3 ? __NV_E4M3 : __NV_E5M2);
      const float2 x = __half22float2(__half2(h));
      f[i] = x.x;
      f[i + 1] = x.y;
    }
#endif
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) f[i] = to_float<T>(r[i]);
  }
}

// ---------------------------------------------------------------------------
// Warp / block reductions (WARP_SIZE aware).
// ---------------------------------------------------------------------------
__device__ __forceinline__ float shfl_xor(float v, int m) {
#if defined(LLMCORE_HIP) || defined(__HIP_PLATFORM_AMD__)
  return __shfl_xor(v, m, WARP_SIZE);
#else
  return __shfl_xor_sync(0xffffffffu, v, m, WARP_SIZE);
#endif
}
__device__ __forceinline__ int shfl_xor(int v, int m) {
#if defined(LLMCORE_HIP) || defined(__HIP_PLATFORM_AMD__)
  return __shfl_xor(v, m, WARP_SIZE);
#else
  return __shfl_xor_sync(0xffffffffu, v, m, WARP_SIZE);
#endif
}
__device__ __forceinline__ float shfl_up(float v, int d) {
#if defined(LLMCORE_HIP) || defined(__HIP_PLATFORM_AMD__)
  return __shfl_up(v, d, WARP_SIZE);
#else
  return __shfl_up_sync(0xffffffffu, v, d, WARP_SIZE);
#endif
}

// Orders shared-memory accesses among the lanes of one warp.
__device__ __forceinline__ void warp_sync() {
#if defined(LLMCORE_HIP) || defined(__HIP_PLATFORM_AMD__)
  __builtin_amdgcn_fence(__ATOMIC_RELEASE, "wavefront");
  __builtin_amdgcn_wave_barrier();
  __builtin_amdgcn_fence(__ATOMIC_ACQUIRE, "wavefront");
#else
  __syncwarp();
#endif
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int m = WARP_SIZE / 2; m > 0; m >>= 1) v += shfl_xor(v, m);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int m = WARP_SIZE / 2; m > 0; m >>= 1) v = fmaxf(v, shfl_xor(v, m));
  return v;
}

// Block-wide reductions; every thread gets the result. `red` must hold
// at least 1024 / WARP_SIZE floats (>= blockDim.x / WARP_SIZE).
__device__ __forceinline__ float block_sum(float v, float* red) {
  const int lane = threadIdx.x % WARP_SIZE, wid = threadIdx.x / WARP_SIZE;
  const int nw = (blockDim.x + WARP_SIZE - 1) / WARP_SIZE;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) red[wid] = v;
  __syncthreads();
  v = lane < nw ? red[lane] : 0.f;
  return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v, float* red) {
  const int lane = threadIdx.x % WARP_SIZE, wid = threadIdx.x / WARP_SIZE;
  const int nw = (blockDim.x + WARP_SIZE - 1) / WARP_SIZE;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) red[wid] = v;
  __syncthreads();
  v = lane < nw ? red[lane] : -INFINITY;
  return warp_max(v);
}

}  // namespace llmcore

#define LLMCORE_RETURN_LAST_ERROR() return cudaGetLastError()

// Dispatch an activation dtype code to a type alias `scalar_t`.
#define LLMCORE_DISPATCH_FLOAT(code, ...)                                     \
  switch (code) {                                                            \
    case ::llmcore::kFloat32: { using scalar_t = float; __VA_ARGS__; break; } \
    case ::llmcore::kFloat16: { using scalar_t = ::llmcore::half_t; __VA_ARGS__; break; } \
    case ::llmcore::kBFloat16: { using scalar_t = ::llmcore::bf16_t; __VA_ARGS__; break; } \
    default: return cudaErrorInvalidValue;                                   \
  }

namespace llmcore {
// Vector load of N elements of S (N*sizeof(S) in {1,2,4,8,16}, suitably aligned).
template <int BYTES> struct VecBytes;
template <> struct VecBytes<1> { using type = uint8_t; };
template <> struct VecBytes<2> { using type = uint16_t; };
template <> struct VecBytes<4> { using type = uint32_t; };
template <> struct VecBytes<8> { using type = uint2; };
template <> struct VecBytes<16> { using type = uint4; };
template <typename S, int N> struct alignas(sizeof(S) * N) VecArr { S v[N]; };
template <typename S, int N>
__device__ __forceinline__ VecArr<S, N> load_vec(const S* p) {
  using VT = typename VecBytes<sizeof(S) * N>::type;
  union { VT raw; VecArr<S, N> arr; } u;
  u.raw = *reinterpret_cast<const VT*>(p);
  return u.arr;
}
}  // namespace llmcore

#endif  // __CUDACC__ || __HIPCC__
