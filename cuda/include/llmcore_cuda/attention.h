#pragma once
#include "llmcore_cuda/common.h"
namespace llmcore {
// Paged attention over "query rows". Decode: one row per sequence (query_start_loc == nullptr),
// row i is the last token of seq i. Varlen (query_start_loc != nullptr): rows are packed query
// tokens; seq s owns rows [qsl[s], qsl[s+1]) which are the last positions of its seq_lens[s] tokens.
// q/out: [num_rows, num_heads, head_dim] (row stride q_stride / out_stride elements).
// Caches: [num_blocks, block_size, num_kv_heads, head_dim]; fp8 caches are dequantised with
// *k_scale / *v_scale. sliding_window > 0: key j is visible to query i iff i - j < window.
// num_splits > 1 splits each row's keys into chunks of partition_size tokens (flash-decoding;
// partition_size <= 0: each row's own key range split evenly into num_splits chunks);
// then tmp_out (float [num_rows*num_heads*num_splits*head_dim]) and tmp_ml (float
// [num_rows*num_heads*num_splits*2]) are required workspaces. use_tensor_cores != 0 routes decode
// (query_start_loc == nullptr) to the mma kernel where paged_attention_mma_supported() holds.
cudaError_t paged_attention(void* out, int64_t out_stride, const void* q, int64_t q_stride,
                            const void* key_cache, const void* value_cache,
                            const int* block_tables, int max_blocks_per_seq, const int* seq_lens,
                            const int* query_start_loc, int num_rows, int num_seqs, int num_heads,
                            int num_kv_heads, int head_dim, int block_size, float scale,
                            int sliding_window, int dtype, int cache_dtype, const float* k_scale,
                            const float* v_scale, int num_splits, int partition_size,
                            float* tmp_out, float* tmp_ml, int use_tensor_cores,
                            cudaStream_t stream);

// Tensor-core decode (attention_decode_mma.cu): fp16/bf16 queries, same-dtype or fp8 caches,
// head_dim 64/128, up to 8 query heads per KV head, power-of-two block sizes >= 8, sm_80+,
// 16-byte aligned q rows; not on HIP. Same contract as paged_attention in decode mode.
bool paged_attention_mma_supported(int head_dim, int num_heads, int num_kv_heads, int block_size,
                                   int dtype, int cache_dtype);
cudaError_t paged_attention_mma(void* out, int64_t out_stride, const void* q, int64_t q_stride,
                                const void* key_cache, const void* value_cache,
                                const int* block_tables, int max_blocks_per_seq,
                                const int* seq_lens, int num_seqs, int num_heads,
                                int num_kv_heads, int head_dim, int block_size, float scale,
                                int sliding_window, int dtype, int cache_dtype,
                                const float* k_scale, const float* v_scale, int num_splits,
                                int partition_size, float* tmp_out, float* tmp_ml,
                                cudaStream_t stream);

// Varlen causal prefill / chunked prefill with cached prefixes; all K/V are read from the paged
// cache (this step's K/V must already be written). Layouts as above; max_query_len bounds
// qsl[s+1]-qsl[s]. fp16/bf16 use tensor cores (mma.sync, sm_80+); fp32 or HIP, or
// use_tensor_cores == 0, run paged_attention in varlen mode.
cudaError_t prefill_attention(void* out, int64_t out_stride, const void* q, int64_t q_stride,
                              const void* key_cache, const void* value_cache,
                              const int* block_tables, int max_blocks_per_seq, const int* seq_lens,
                              const int* query_start_loc, int num_tokens, int num_seqs,
                              int max_query_len, int num_heads, int num_kv_heads, int head_dim,
                              int block_size, float scale, int sliding_window, int dtype,
                              int cache_dtype, const float* k_scale, const float* v_scale,
                              int use_tensor_cores, cudaStream_t stream);

#if defined(__CUDACC__) || defined(__HIPCC__)
// Keys [start, end) of a decode row of length L seen by split `split`: the window's range cut
// into num_splits partitions of partition_size keys (<= 0: the row's own range split evenly,
// so short rows still use every split and a CUDA graph captured for max_model_len keeps its
// grid). One definition for both decode kernels: their partials meet in one reduce kernel.
__device__ __forceinline__ void decode_split_range(int L, int window, int num_splits,
                                                   int partition_size, int split, int& start,
                                                   int& end) {
  const int kv_lo = window > 0 ? max(0, L - window) : 0;
  start = kv_lo;
  end = L;
  if (num_splits > 1) {
    const int part =
        partition_size > 0 ? partition_size : (L - kv_lo + num_splits - 1) / num_splits;
    start = kv_lo + split * part;
    end = min(L, start + part);
  }
}

// Online softmax over log2-scaled scores (the tensor-core decode and prefill kernels): row max
// m takes this tile's max. Returns the factor that rescales what was accumulated under the old
// max and sets base, the value to subtract before exp2f: 0 while the row has seen only masked
// (-inf) scores, so exp2f(-inf - base) is 0 rather than NaN.
__device__ __forceinline__ float online_softmax_max(float& m, float tile_max, float& base) {
  const float mn = fmaxf(m, tile_max);
  base = mn == -INFINITY ? 0.f : mn;
  const float corr = exp2f(m - base);
  m = mn;
  return corr;
}
#endif
}  // namespace llmcore
