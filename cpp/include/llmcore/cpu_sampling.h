#pragma once
// Sampling on the CPU: one exact draw per row from softmax(logits), by inverse CDF.
// Plain C++17; no Python, no torch.

#include <cstdint>

namespace llmcore {

// For each i < num_rows, row r = rows ? rows[i] : i of `logits` (float32, `logits_stride`
// elements between rows, `vocab` columns): out_tokens[i] = the first token t whose cumulative
// probability mass (unnormalised, exp(x - max)) exceeds min(u[i], 1 - 1e-6) * total, i.e. a
// draw from softmax(row) for u[i] ~ U[0, 1); out_lse[i] (may be null) = the row's
// log-sum-exp, so a caller's logprob of the token needs no second pass. -inf logits (masked
// tokens) cost one vector step each and are never drawn; a row with no finite logit draws
// vocab - 1 with lse -inf. Rows are split over num_threads (<= 0: OpenMP's default).
// Weights below exp(-69) of the row's max count as 0 (they cannot change an fp32 sum).
void sample_inverse_cdf_f32(const float* logits, int64_t logits_stride, const int64_t* rows,
                            int num_rows, int vocab, const float* u, int64_t* out_tokens,
                            float* out_lse, int num_threads = 0);

// "generic" or "avx2": the instruction set the kernel dispatches to on this CPU.
const char* sample_inverse_cdf_isa();

}  // namespace llmcore
