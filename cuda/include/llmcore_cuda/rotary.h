#pragma once
#include "llmcore_cuda/common.h"
namespace llmcore {
// In-place rotary embedding. positions: int64 [num_tokens]. query [num_tokens, num_heads,
// head_dim] (token stride query_stride), key likewise (may be null). cos_sin_cache: float32
// [max_position, rot_dim] = [cos(rot_dim/2) | sin(rot_dim/2)]; the first rot_dim of each head
// are rotated. is_neox: pairs (i, i + rot_dim/2); else GPT-J pairs (2i, 2i+1).
cudaError_t rotary_embedding(const int64_t* positions, void* query, int64_t query_stride,
                             void* key, int64_t key_stride, const float* cos_sin_cache,
                             int num_tokens, int num_heads, int num_kv_heads, int head_dim,
                             int rot_dim, int is_neox, int dtype, cudaStream_t stream);
}  // namespace llmcore
