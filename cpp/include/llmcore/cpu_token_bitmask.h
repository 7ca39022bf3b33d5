#pragma once
// Guided decoding on the CPU: disallowed tokens' logits -> -inf, from a token bitmask.
// Plain C++17; no Python, no torch.

#include <cstdint>

namespace llmcore {

// logits: float32 rows with `logits_stride` elements between rows; bitmask: int32
// [num_rows, words], bit t % 32 of word t / 32 allows token t (words past `words` count as
// 0: a vocabulary padded beyond the mask is disallowed). rows: the logits row of mask row
// i, or null for row i. An all-ones word (most words inside a JSON string) is skipped after
// one load. Rows are split over num_threads (<= 0: OpenMP's default) when the work is large.
void apply_token_bitmask_f32(float* logits, int64_t logits_stride, const int32_t* bitmask,
                             int words, const int64_t* rows, int num_rows, int vocab,
                             int num_threads = 0);

}  // namespace llmcore
