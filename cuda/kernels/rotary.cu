// Rotary position embedding, neox and gptj styles, with a Python-precomputed float32
// cos/sin cache (any scaling: llama3 / linear / dynamic NTK is folded into the cache).
#include "llmcore_cuda/rotary.h"

namespace llmcore {
namespace {

template <typename T>
__device__ __forceinline__ void rotate_heads(T* base, int64_t tok_stride, int nheads, int head_dim,
                                             int half, const float* cs, bool neox) {
  const int n = nheads * half;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int h = i / half, j = i % half;
    T* p = base + (int64_t)h * head_dim;
    const int a = neox ? j : 2 * j, b = neox ? j + half : 2 * j + 1;
    const float c = cs[j], s = cs[half + j];
    const float x = to_float<T>(p[a]), y = to_float<T>(p[b]);
    p[a] = from_float<T>(x * c - y * s);
    p[b] = from_float<T>(y * c + x * s);
  }
  (void)tok_stride;
}

template <typename T>
__global__ void rotary_kernel(const int64_t* __restrict__ positions, T* __restrict__ q,
                              int64_t q_stride, T* __restrict__ k, int64_t k_stride,
                              const float* __restrict__ cache, int nh, int nkv, int head_dim,
                              int rot_dim, bool neox) {
  const int64_t tok = blockIdx.x;
  const float* cs = cache + positions[tok] * rot_dim;
  const int half = rot_dim / 2;
  rotate_heads<T>(q + tok * q_stride, q_stride, nh, head_dim, half, cs, neox);
  if (k) rotate_heads<T>(k + tok * k_stride, k_stride, nkv, head_dim, half, cs, neox);
}

}  // namespace

cudaError_t rotary_embedding(const int64_t* positions, void* query, int64_t query_stride,
                             void* key, int64_t key_stride, const float* cos_sin_cache,
                             int num_tokens, int num_heads, int num_kv_heads, int head_dim,
                             int rot_dim, int is_neox, int dtype, cudaStream_t stream) {
  if (num_tokens <= 0) return cudaSuccess;
  if (rot_dim % 2 || rot_dim > head_dim) return cudaErrorInvalidValue;
  int threads = num_heads * rot_dim / 2;
  threads = threads > 512 ? 512 : ((threads + 31) / 32) * 32;
  LLMCORE_DISPATCH_FLOAT(dtype, {
    rotary_kernel<scalar_t><<<num_tokens, threads, 0, stream>>>(
        positions, (scalar_t*)query, query_stride, (scalar_t*)key, key_stride, cos_sin_cache,
        num_heads, num_kv_heads, head_dim, rot_dim, is_neox != 0);
  });
  return cudaGetLastError();
}

}  // namespace llmcore
