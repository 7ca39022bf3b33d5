// Paged attention decode on tensor cores (mma.sync.m16n8k16, sm_80+): one block per
// (sequence, KV head, split), the GQA group's query heads (up to 8) as the N dimension.
//
// Why: the SIMT decode kernel spends a multiply-add per (token, query head, dim) plus a
// conversion per cache element on CUDA cores; with an fp8 cache that, not HBM, bounds it. Here
// the dot products and P.V run as mma, so per token only the loads, the fp8 -> f16 conversions
// and a few softmax operations remain on the CUDA cores.
//
// Per warp and 16-token sub-tile (transposed so tokens fill the 16 rows of the mma):
//   S^T[16 tok x 8 heads] = K[16 tok x HD] . Q^T[HD x 8 heads]        (HD/16 mma)
//   O^T[HD x 8 heads]    += V^T[HD x 16 tok] . P^T[16 tok x 8 heads]  (HD/16 mma)
// The contraction index of an mma may be relabelled freely as long as both operands agree, so
// each lane reads contiguous cache bytes: for K, lane (g, c) holds tokens g and g+8 at dims
// [c*HD/4, (c+1)*HD/4); for V, tokens 2c, 2c+1, 2c+8, 2c+9 at dims [g*HD/8, (g+1)*HD/8), paired
// across tokens with byte permutes. P^T leaves the S^T accumulator with tokens on the rows but
// must enter P.V with heads on the lanes' g: four shuffles per sub-tile transpose it.
// fp8 caches are converted to f16 (exact) and use f16 mma with the query rounded to f16;
// same-dtype caches use the activation dtype's mma. The k/v scales multiply the scores and the
// output, not the elements. Splits and their partial (m, l) follow paged_attention's contract, so
// its reduce kernel combines them.
#include "llmcore_cuda/attention.h"
#include "llmcore_cuda/mma.h"

#include <type_traits>

namespace llmcore {

#if !(defined(LLMCORE_HIP) || defined(__HIP_PLATFORM_AMD__))
namespace {

constexpr int kMmaThreads = 128;
constexpr int kMmaWarps = kMmaThreads / 32;
constexpr int kMaxGroup = 8;  // query heads per KV head served by one block (the mma's N)
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Loads N 32-bit words (N even; 16-byte vectors when N % 4 == 0, else 8-byte) from global memory
// aligned to the vector size.
template <int N>
__device__ __forceinline__ void load_words(const void* p, uint32_t (&w)[N]) {
  static_assert(N % 2 == 0, "whole 8-byte vectors");
  if constexpr (N % 4 == 0) {
#pragma unroll
    for (int i = 0; i < N / 4; ++i) {
      const uint4 v = reinterpret_cast<const uint4*>(p)[i];
      w[4 * i] = v.x;
      w[4 * i + 1] = v.y;
      w[4 * i + 2] = v.z;
      w[4 * i + 3] = v.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < N / 2; ++i) {
      const uint2 v = reinterpret_cast<const uint2*>(p)[i];
      w[2 * i] = v.x;
      w[2 * i + 1] = v.y;
    }
  }
}

// Token pairs of V for the A operand of P.V: out[d] = (a[d], b[d]) as an MT x2 word, for the
// lane's VD dims, from the raw cache words of two tokens.
template <int KIND, int VD, int VW>
__device__ __forceinline__ void pair_tokens(const uint32_t (&a)[VW], const uint32_t (&b)[VW],
                                            uint32_t (&out)[VD]) {
  if constexpr (KIND == kFp8E4M3 || KIND == kFp8E5M2) {
#pragma unroll
    for (int w = 0; w < VW; ++w) {  // word w holds dims 4w..4w+3 of each token
      fp8x4_to_half2x2<KIND>(__byte_perm(a[w], b[w], 0x5140), out[4 * w], out[4 * w + 1]);
      fp8x4_to_half2x2<KIND>(__byte_perm(a[w], b[w], 0x7362), out[4 * w + 2], out[4 * w + 3]);
    }
  } else {
#pragma unroll
    for (int w = 0; w < VW; ++w) {  // word w holds dims 2w, 2w+1
      out[2 * w] = __byte_perm(a[w], b[w], 0x5410);
      out[2 * w + 1] = __byte_perm(a[w], b[w], 0x7632);
    }
  }
}

// TOK: 16-token sub-tiles per warp iteration (all their loads are issued together).
template <typename T, int KIND, int HD, int TOK>
__global__ void __launch_bounds__(kMmaThreads)
paged_attention_mma_kernel(T* __restrict__ out, int64_t out_stride, const T* __restrict__ q,
                           int64_t q_stride,
                           const typename CacheTraits<T, KIND>::storage* __restrict__ kc,
                           const typename CacheTraits<T, KIND>::storage* __restrict__ vc,
                           const int* __restrict__ block_tables, int mbps,
                           const int* __restrict__ seq_lens, int num_heads, int num_kv_heads,
                           int bs_shift, float scale, int window, const float* k_scale,
                           const float* v_scale, int num_splits, int partition_size,
                           float* __restrict__ tmp_out, float* __restrict__ tmp_ml) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr bool kFp8 = KIND == kFp8E4M3 || KIND == kFp8E5M2;
  using MT = std::conditional_t<kFp8, half_t, T>;  // mma operand type
  using Mma = MmaOp<MT>;
  using S = typename CacheTraits<T, KIND>::storage;
  constexpr int KD = HD / 4;                    // K dims per lane and token
  constexpr int VD = HD / 8;                    // V dims per lane and token
  constexpr int KW = KD * (int)sizeof(S) / 4;   // ... as 32-bit words
  constexpr int VW = VD * (int)sizeof(S) / 4;
  constexpr int KSTEPS = HD / 16;               // k-steps of S^T, m-tiles of O^T
  static_assert(KW % 2 == 0 && VW % 2 == 0, "8- or 16-byte loads per lane");

  __shared__ float s_o[kMmaWarps][kMaxGroup][HD];
  __shared__ float s_m[kMmaWarps][kMaxGroup], s_l[kMmaWarps][kMaxGroup];

  const int row = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int G = num_heads / num_kv_heads;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, c = lane & 3;

  const int L = seq_lens[row];
  int start, end;
  decode_split_range(L, window, num_splits, partition_size, split, start, end);
  const float ks = kFp8 ? *k_scale : 1.f;
  const float vs = kFp8 ? *v_scale : 1.f;
  const float sl2 = scale * ks * kLog2e;  // scores in log2 units

  // Q^T as the B operand: lane (g, c) holds head g at dims [c*KD, (c+1)*KD); k-step j uses
  // dims 4j..4j+3 of that range (the K operand below uses the same relabelling).
  uint32_t qb[KSTEPS][2];
  {
    uint32_t qw[KD / 2];
#pragma unroll
    for (int i = 0; i < KD / 2; ++i) qw[i] = 0u;
    if (g < G) {
      const T* qp = q + (int64_t)row * q_stride + (int64_t)(kvh * G + g) * HD + c * KD;
      if constexpr (std::is_same<MT, T>::value) {
        load_words(qp, qw);
      } else {
        uint32_t raw[KD / 2];
        load_words(qp, raw);
#pragma unroll
        for (int i = 0; i < KD / 2; ++i) {
          const T* e = reinterpret_cast<const T*>(&raw[i]);
          qw[i] = Mma::pack(to_float<T>(e[0]), to_float<T>(e[1]));
        }
      }
    }
#pragma unroll
    for (int j = 0; j < KSTEPS; ++j) {
      qb[j][0] = qw[2 * j];
      qb[j][1] = qw[2 * j + 1];
    }
  }

  float o[KSTEPS][4];
#pragma unroll
  for (int i = 0; i < KSTEPS; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;  // heads 2c and 2c+1

  const int64_t rs = (int64_t)num_kv_heads * HD;  // cache elements per token slot
  const int* bt = block_tables + (int64_t)row * mbps;
  const int bmask = (1 << bs_shift) - 1;
  if (start < end) {
    // Sub-tiles are aligned to 16 tokens so each 8-token group lies in one page (block sizes
    // are powers of two >= 8 here): one block-table lookup per group instead of per token.
    // Groups wholly outside [start, end) read the nearest valid group's page and are masked.
    const int glo = start & ~7, ghi = (end - 1) & ~7;
    for (int t0 = (start & ~15) + warp * 16 * TOK; t0 < end; t0 += kMmaWarps * 16 * TOK) {
      uint32_t kr[TOK][2][KW];  // tokens g, g+8
      uint32_t vr[TOK][4][VW];  // tokens 2c, 2c+1, 2c+8, 2c+9
#pragma unroll
      for (int s = 0; s < TOK; ++s) {
#pragma unroll
        for (int grp = 0; grp < 2; ++grp) {
          const int gb = min(max(t0 + 16 * s + 8 * grp, glo), ghi);
          const int64_t slot = ((int64_t)bt[gb >> bs_shift] << bs_shift) | (gb & bmask);
          const int64_t base = slot * rs + (int64_t)kvh * HD;
          load_words(kc + base + g * rs + c * KD, kr[s][grp]);
          load_words(vc + base + (2 * c) * rs + g * VD, vr[s][2 * grp]);
          load_words(vc + base + (2 * c + 1) * rs + g * VD, vr[s][2 * grp + 1]);
        }
      }
      const bool full = t0 >= start && t0 + 16 * TOK <= end;
      if (!full) {
        // Slots outside [start, end) may hold stale bytes (NaN for fp8): P = 0 does not cancel
        // a NaN in the mma, so those V values are zeroed; their scores are masked below.
#pragma unroll
        for (int s = 0; s < TOK; ++s) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int t = t0 + 16 * s + 2 * c + (i & 1) + 8 * (i >> 1);
            if (t < start || t >= end) {
#pragma unroll
              for (int w = 0; w < VW; ++w) vr[s][i][w] = 0u;
            }
          }
        }
      }

      // S^T = K . Q^T; lane holds (token g, heads 2c, 2c+1) in sc[s][0..1] and token g+8 in [2..3].
      float sc[TOK][4];
#pragma unroll
      for (int s = 0; s < TOK; ++s) {
        sc[s][0] = sc[s][1] = sc[s][2] = sc[s][3] = 0.f;
#pragma unroll
        for (int j = 0; j < KSTEPS; ++j) {
          uint32_t a[4];
          if constexpr (kFp8) {
            fp8x4_to_half2x2<KIND>(kr[s][0][j], a[0], a[2]);
            fp8x4_to_half2x2<KIND>(kr[s][1][j], a[1], a[3]);
          } else {
            a[0] = kr[s][0][2 * j];
            a[2] = kr[s][0][2 * j + 1];
            a[1] = kr[s][1][2 * j];
            a[3] = kr[s][1][2 * j + 1];
          }
          Mma::run(sc[s], a, qb[j][0], qb[j][1]);
        }
      }

      // Online softmax per head (column); a column's tokens are spread over the lanes' g.
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int s = 0; s < TOK; ++s) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = sc[s][e] * sl2;
          if (!full) {
            const int t = t0 + 16 * s + g + 8 * (e >> 1);
            if (t < start || t >= end) x = -INFINITY;
          }
          sc[s][e] = x;
        }
        mx0 = fmaxf(mx0, fmaxf(sc[s][0], sc[s][2]));
        mx1 = fmaxf(mx1, fmaxf(sc[s][1], sc[s][3]));
      }
#pragma unroll
      for (int off = 4; off < 32; off <<= 1) {
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
      }
      float b0, b1;
      const float cr0 = online_softmax_max(m0, mx0, b0), cr1 = online_softmax_max(m1, mx1, b1);
      float ps0 = 0.f, ps1 = 0.f;
#pragma unroll
      for (int s = 0; s < TOK; ++s) {
        sc[s][0] = exp2f(sc[s][0] - b0);
        sc[s][1] = exp2f(sc[s][1] - b1);
        sc[s][2] = exp2f(sc[s][2] - b0);
        sc[s][3] = exp2f(sc[s][3] - b1);
        ps0 += sc[s][0] + sc[s][2];
        ps1 += sc[s][1] + sc[s][3];
      }
      l0 = l0 * cr0 + ps0;
      l1 = l1 * cr1 + ps1;
      // The running max settles after the first tiles of a long sequence: skip the rescale
      // when no lane's factor differs from 1 (a warp-uniform branch).
      if (__any_sync(0xffffffffu, cr0 != 1.f || cr1 != 1.f)) {
#pragma unroll
        for (int i = 0; i < KSTEPS; ++i) {
          o[i][0] *= cr0;
          o[i][1] *= cr1;
          o[i][2] *= cr0;
          o[i][3] *= cr1;
        }
      }

      // O^T += V^T . P^T
#pragma unroll
      for (int s = 0; s < TOK; ++s) {
        // P^T B operand: lane (g, c) needs head g at tokens (2c, 2c+1) and (2c+8, 2c+9); those
        // sit in lanes (2c, g/2) and (2c+1, g/2), half g%2 of their packed (head 2c', 2c'+1).
        const uint32_t plo = Mma::pack(sc[s][0], sc[s][1]);  // token g
        const uint32_t phi = Mma::pack(sc[s][2], sc[s][3]);  // token g + 8
        const int src = (2 * c) * 4 + (g >> 1);
        const uint32_t x0 = __shfl_sync(0xffffffffu, plo, src);
        const uint32_t x1 = __shfl_sync(0xffffffffu, plo, src + 4);
        const uint32_t y0 = __shfl_sync(0xffffffffu, phi, src);
        const uint32_t y1 = __shfl_sync(0xffffffffu, phi, src + 4);
        const uint32_t sel = (g & 1) ? 0x7632u : 0x5410u;
        const uint32_t pb0 = __byte_perm(x0, x1, sel), pb1 = __byte_perm(y0, y1, sel);

        uint32_t v01[VD], v89[VD];  // (token 2c, 2c+1) and (2c+8, 2c+9) pairs per dim
        pair_tokens<KIND, VD, VW>(vr[s][0], vr[s][1], v01);
        pair_tokens<KIND, VD, VW>(vr[s][2], vr[s][3], v89);
        // m-tile i: rows g / g+8 are the lane's dims i and i + HD/16.
#pragma unroll
        for (int i = 0; i < KSTEPS; ++i) {
          const uint32_t a[4] = {v01[i], v01[i + KSTEPS], v89[i], v89[i + KSTEPS]};
          Mma::run(o[i], a, pb0, pb1);
        }
      }
    }
  }

  // Lane (g, c) holds heads 2c, 2c+1 at dims g*VD + [0, VD); combine the warps.
#pragma unroll
  for (int off = 4; off < 32; off <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, off);
    l1 += __shfl_xor_sync(0xffffffffu, l1, off);
  }
  const int h0 = 2 * c, h1 = 2 * c + 1;
#pragma unroll
  for (int i = 0; i < KSTEPS; ++i) {
    s_o[warp][h0][g * VD + i] = o[i][0];
    s_o[warp][h1][g * VD + i] = o[i][1];
    s_o[warp][h0][g * VD + KSTEPS + i] = o[i][2];
    s_o[warp][h1][g * VD + KSTEPS + i] = o[i][3];
  }
  if (g == 0) {  // natural-log units, as paged_attention's reduce kernel expects
    s_m[warp][h0] = m0 * kLn2;
    s_m[warp][h1] = m1 * kLn2;
    s_l[warp][h0] = l0;
    s_l[warp][h1] = l1;
  }
  __syncthreads();

  for (int idx = threadIdx.x; idx < G * HD; idx += kMmaThreads) {
    const int h = idx / HD, d = idx % HD;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kMmaWarps; ++w) M = fmaxf(M, s_m[w][h]);
    float Ls = 0.f, A = 0.f;
    if (M != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kMmaWarps; ++w) {
        const float f = __expf(s_m[w][h] - M);
        Ls += s_l[w][h] * f;
        A += s_o[w][h][d] * f;
      }
    }
    const int head = kvh * G + h;
    const float res = Ls > 0.f ? A / Ls * vs : 0.f;
    if (num_splits == 1) {
      out[(int64_t)row * out_stride + (int64_t)head * HD + d] = from_float<T>(res);
    } else {
      const int64_t slot = ((int64_t)row * num_heads + head) * num_splits + split;
      tmp_out[slot * HD + d] = res;
      if (d == 0) {
        tmp_ml[slot * 2] = M;
        tmp_ml[slot * 2 + 1] = Ls;
      }
    }
  }
#endif
}

template <typename T, int KIND, int HD>
void launch(const dim3& grid, cudaStream_t stream, T* out, int64_t out_stride, const T* q,
            int64_t q_stride, const void* kc, const void* vc, const int* bt, int mbps,
            const int* seq_lens, int num_heads, int num_kv_heads, int bs_shift, float scale,
            int window, const float* k_scale, const float* v_scale, int num_splits,
            int partition_size, float* tmp_out, float* tmp_ml) {
  using S = typename CacheTraits<T, KIND>::storage;
  // fp8 sub-tiles are half the bytes: two per iteration keep as many loads in flight.
  constexpr int TOK = sizeof(S) == 1 ? 2 : 1;
  paged_attention_mma_kernel<T, KIND, HD, TOK><<<grid, kMmaThreads, 0, stream>>>(
      out, out_stride, q, q_stride, (const S*)kc, (const S*)vc, bt, mbps, seq_lens, num_heads,
      num_kv_heads, bs_shift, scale, window, k_scale, v_scale, num_splits, partition_size,
      tmp_out, tmp_ml);
}

template <typename T, int KIND>
void launch_hd(int head_dim, const dim3& grid, cudaStream_t stream, T* out, int64_t out_stride,
               const T* q, int64_t q_stride, const void* kc, const void* vc, const int* bt,
               int mbps, const int* seq_lens, int num_heads, int num_kv_heads, int bs_shift,
               float scale, int window, const float* k_scale, const float* v_scale,
               int num_splits, int partition_size, float* tmp_out, float* tmp_ml) {
  if (head_dim == 64)
    launch<T, KIND, 64>(grid, stream, out, out_stride, q, q_stride, kc, vc, bt, mbps, seq_lens,
                        num_heads, num_kv_heads, bs_shift, scale, window, k_scale, v_scale,
                        num_splits, partition_size, tmp_out, tmp_ml);
  else
    launch<T, KIND, 128>(grid, stream, out, out_stride, q, q_stride, kc, vc, bt, mbps, seq_lens,
                         num_heads, num_kv_heads, bs_shift, scale, window, k_scale, v_scale,
                         num_splits, partition_size, tmp_out, tmp_ml);
}

}  // namespace
#endif  // !HIP

bool paged_attention_mma_supported(int head_dim, int num_heads, int num_kv_heads, int block_size,
                                   int dtype, int cache_dtype) {
#if defined(LLMCORE_HIP) || defined(__HIP_PLATFORM_AMD__)
  (void)head_dim, (void)num_heads, (void)num_kv_heads, (void)block_size, (void)dtype,
      (void)cache_dtype;
  return false;
#else
  if (dtype != kFloat16 && dtype != kBFloat16) return false;
  if (cache_dtype != dtype && cache_dtype != kFp8E4M3 && cache_dtype != kFp8E5M2) return false;
  if (head_dim != 64 && head_dim != 128) return false;
  if (num_kv_heads <= 0 || num_heads % num_kv_heads != 0) return false;
  if (num_heads / num_kv_heads > kMaxGroup) return false;
  if (block_size < 8 || (block_size & (block_size - 1)) != 0) return false;
  return current_device_has_mma();
#endif
}

cudaError_t paged_attention_mma(void* out, int64_t out_stride, const void* q, int64_t q_stride,
                                const void* key_cache, const void* value_cache,
                                const int* block_tables, int max_blocks_per_seq,
                                const int* seq_lens, int num_seqs, int num_heads,
                                int num_kv_heads, int head_dim, int block_size, float scale,
                                int sliding_window, int dtype, int cache_dtype,
                                const float* k_scale, const float* v_scale, int num_splits,
                                int partition_size, float* tmp_out, float* tmp_ml,
                                cudaStream_t stream) {
#if defined(LLMCORE_HIP) || defined(__HIP_PLATFORM_AMD__)
  (void)out, (void)out_stride, (void)q, (void)q_stride, (void)key_cache, (void)value_cache,
      (void)block_tables, (void)max_blocks_per_seq, (void)seq_lens, (void)num_seqs,
      (void)num_heads, (void)num_kv_heads, (void)head_dim, (void)block_size, (void)scale,
      (void)sliding_window, (void)dtype, (void)cache_dtype, (void)k_scale, (void)v_scale,
      (void)num_splits, (void)partition_size, (void)tmp_out, (void)tmp_ml, (void)stream;
  return cudaErrorInvalidValue;
#else
  int bs_shift = 0;
  while ((1 << bs_shift) < block_size) ++bs_shift;
  const dim3 grid(num_seqs, num_kv_heads, num_splits);
#define LLMCORE_PAM_ARGS                                                                      \
  head_dim, grid, stream, (scalar_t*)out, out_stride, (const scalar_t*)q, q_stride, key_cache, \
      value_cache, block_tables, max_blocks_per_seq, seq_lens, num_heads, num_kv_heads,       \
      bs_shift, scale, sliding_window, k_scale, v_scale, num_splits, partition_size, tmp_out,  \
      tmp_ml
  auto dispatch = [&](auto tag) -> cudaError_t {
    using scalar_t = decltype(tag);
    if (cache_dtype == dtype) launch_hd<scalar_t, -1>(LLMCORE_PAM_ARGS);
    else if (cache_dtype == kFp8E4M3) launch_hd<scalar_t, kFp8E4M3>(LLMCORE_PAM_ARGS);
    else if (cache_dtype == kFp8E5M2) launch_hd<scalar_t, kFp8E5M2>(LLMCORE_PAM_ARGS);
    else return cudaErrorInvalidValue;
    return cudaGetLastError();
  };
#undef LLMCORE_PAM_ARGS
  if (dtype == kFloat16) return dispatch(half_t{});
  if (dtype == kBFloat16) return dispatch(bf16_t{});
  return cudaErrorInvalidValue;
#endif
}

}  // namespace llmcore
