#pragma once
// Paged decode attention on the CPU (fp32): one query token per sequence, K/V read in
// place from the paged cache (no gather). Plain C++17; no Python, no CUDA.

#include <cstdint>

namespace llmcore {

// q:           [num_seqs, num_heads, head_dim]; q_stride elements between sequences.
// key_cache,
// value_cache: [num_blocks, block_size, num_kv_heads, head_dim], contiguous.
// block_tables:[num_seqs, max_blocks] (int32 block ids), seq_lens: [num_seqs].
// out:         [num_seqs, num_heads, head_dim]; out_stride elements between sequences.
// sliding_window: -1 = off; else only the last `sliding_window` tokens are attended.
// GQA: query head i uses kv head i / (num_heads / num_kv_heads).
// num_threads: <= 0 = hardware concurrency (capped at the work size).
// Each sequence (all heads, each K/V row read once) is reduced by one thread in a fixed order, so a
// sequence's result does not depend on the rest of the batch or on the thread count.
// A sequence with seq_len <= 0 gets zeros.
void paged_decode_attention_f32(const float* q, int64_t q_stride, const float* key_cache,
                                const float* value_cache, const int32_t* block_tables,
                                const int32_t* seq_lens, int num_seqs, int num_heads,
                                int num_kv_heads, int head_dim, int block_size,
                                int max_blocks, float scale, int sliding_window, float* out,
                                int64_t out_stride, int num_threads = 0);

// Which implementation the runtime dispatch picks: "avx2" or "generic".
const char* paged_decode_attention_isa();

}  // namespace llmcore
