#pragma once
#include "llmcore_cuda/common.h"
namespace llmcore {
// Write new K/V rows into the paged cache.
// key/value: [num_tokens, num_kv_heads, head_dim], row stride key_stride/value_stride
// (elements), heads contiguous. Caches: [num_blocks, block_size, num_kv_heads, head_dim]
// contiguous. slot_mapping: int64 [num_tokens], slot = block*block_size + offset, < 0 skips.
// dtype: activation dtype code; cache_dtype: same as dtype, or kFp8E4M3/kFp8E5M2, in which
// case the cache stores value / scale (k_scale/v_scale: device float[1]).
cudaError_t reshape_and_cache(const void* key, const void* value, void* key_cache, void* value_cache,
                              const int64_t* slot_mapping, int num_tokens, int num_kv_heads,
                              int head_dim, int block_size, int64_t key_stride, int64_t value_stride,
                              int dtype, int cache_dtype, const float* k_scale, const float* v_scale,
                              cudaStream_t stream);
}  // namespace llmcore
