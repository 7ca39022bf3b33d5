// Write new K/V into the paged KV cache by slot mapping (bf16/fp16/fp32, or fp8 with a
// per-tensor scale).
#include "llmcore_cuda/cache.h"

namespace llmcore {
namespace {

template <typename T, int KIND>
__global__ void reshape_and_cache_kernel(const T* __restrict__ key, const T* __restrict__ value,
                                         typename CacheTraits<T, KIND>::storage* __restrict__ kc,
                                         typename CacheTraits<T, KIND>::storage* __restrict__ vc,
                                         const int64_t* __restrict__ slot_mapping, int row_elems,
                                         int64_t key_stride, int64_t value_stride,
                                         const float* k_scale, const float* v_scale) {
  using Tr = CacheTraits<T, KIND>;
  const int64_t tok = blockIdx.x;
  const int64_t slot = slot_mapping[tok];
  if (slot < 0) return;
  float kinv = 1.f, vinv = 1.f;
  if (KIND == kFp8E4M3 || KIND == kFp8E5M2) {
    kinv = 1.f / *k_scale;
    vinv = 1.f / *v_scale;
  }
  const T* k = key + tok * key_stride;
  const T* v = value + tok * value_stride;
  auto* kd = kc + slot * row_elems;
  auto* vd = vc + slot * row_elems;
  for (int i = threadIdx.x; i < row_elems; i += blockDim.x) {
    kd[i] = Tr::store(to_float<T>(k[i]), kinv);
    vd[i] = Tr::store(to_float<T>(v[i]), vinv);
  }
}

// Same-dtype copy: vectorised 16-byte moves when aligned.
template <typename T>
__global__ void reshape_and_cache_copy_kernel(const T* __restrict__ key, const T* __restrict__ value,
                                              T* __restrict__ kc, T* __restrict__ vc,
                                              const int64_t* __restrict__ slot_mapping, int row_elems,
                                              int64_t key_stride, int64_t value_stride) {
  const int64_t tok = blockIdx.x;
  const int64_t slot = slot_mapping[tok];
  if (slot < 0) return;
  constexpr int VEC = 16 / sizeof(T);
  const int nvec = row_elems / VEC;
  const uint4* k = reinterpret_cast<const uint4*>(key + tok * key_stride);
  const uint4* v = reinterpret_cast<const uint4*>(value + tok * value_stride);
  uint4* kd = reinterpret_cast<uint4*>(kc + slot * row_elems);
  uint4* vd = reinterpret_cast<uint4*>(vc + slot * row_elems);
  for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
    kd[i] = k[i];
    vd[i] = v[i];
  }
}

}  // namespace

cudaError_t reshape_and_cache(const void* key, const void* value, void* key_cache, void* value_cache,
                              const int64_t* slot_mapping, int num_tokens, int num_kv_heads,
                              int head_dim, int block_size, int64_t key_stride, int64_t value_stride,
                              int dtype, int cache_dtype, const float* k_scale, const float* v_scale,
                              cudaStream_t stream) {
  (void)block_size;  // slot already encodes block*block_size + offset
  if (num_tokens <= 0) return cudaSuccess;
  const int row = num_kv_heads * head_dim;
  const int threads = row >= 512 ? 512 : ((row + 31) / 32) * 32;
  const dim3 grid(num_tokens);
  LLMCORE_DISPATCH_FLOAT(dtype, {
    if (cache_dtype == dtype) {
      constexpr int VEC = 16 / sizeof(scalar_t);
      const bool aligned = row % VEC == 0 && key_stride % VEC == 0 && value_stride % VEC == 0 &&
                           ((uintptr_t)key | (uintptr_t)value | (uintptr_t)key_cache |
                            (uintptr_t)value_cache) % 16 == 0;
      if (aligned) {
        reshape_and_cache_copy_kernel<scalar_t><<<grid, threads, 0, stream>>>(
            (const scalar_t*)key, (const scalar_t*)value, (scalar_t*)key_cache,
            (scalar_t*)value_cache, slot_mapping, row, key_stride, value_stride);
      } else {
        reshape_and_cache_kernel<scalar_t, -1><<<grid, threads, 0, stream>>>(
            (const scalar_t*)key, (const scalar_t*)value, (scalar_t*)key_cache,
            (scalar_t*)value_cache, slot_mapping, row, key_stride, value_stride, k_scale, v_scale);
      }
    } else if (cache_dtype == kFp8E4M3) {
      if (!k_scale || !v_scale) return cudaErrorInvalidValue;
      reshape_and_cache_kernel<scalar_t, kFp8E4M3><<<grid, threads, 0, stream>>>(
          (const scalar_t*)key, (const scalar_t*)value, (uint8_t*)key_cache, (uint8_t*)value_cache,
          slot_mapping, row, key_stride, value_stride, k_scale, v_scale);
    } else if (cache_dtype == kFp8E5M2) {
      if (!k_scale || !v_scale) return cudaErrorInvalidValue;
      reshape_and_cache_kernel<scalar_t, kFp8E5M2><<<grid, threads, 0, stream>>>(
          (const scalar_t*)key, (const scalar_t*)value, (uint8_t*)key_cache, (uint8_t*)value_cache,
          slot_mapping, row, key_stride, value_stride, k_scale, v_scale);
    } else {
      return cudaErrorInvalidValue;
    }
  });
  return cudaGetLastError();
}

}  // namespace llmcore
