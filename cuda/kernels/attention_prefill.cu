// Varlen packed prefill / chunked-prefill attention over the paged KV cache. Each sequence's
// queries are the last query_len of its seq_len positions; all K/V (cached prefix and this
// step's new tokens) are read from the paged cache. Causal, GQA (the query heads of one KV head
// are packed into the tile's rows so K/V tiles are shared), optional sliding window.
// fp16/bf16 use tensor cores via mma.sync.m16n8k16 (sm_80+, FlashAttention-2 style online
// softmax). fp32, HIP, and use_tensor_cores == 0 use the paged_attention varlen kernel.
// K/V tiles are double-buffered in shared memory (cp.async for same-dtype caches; fp8 tiles are
// dequantised through registers); P.V reads V with ldmatrix.trans.
// TODO(perf): a wgmma + TMA path for sm_90a, and a split-KV variant for very long prefixes.
#include "llmcore_cuda/attention.h"
#include "llmcore_cuda/mma.h"

#include <type_traits>

namespace llmcore {

#if !(defined(LLMCORE_HIP) || defined(__HIP_PLATFORM_AMD__))
namespace {

constexpr int BM = 64;   // query rows per block (4 warps x 16)
constexpr int BN = 64;   // keys per tile
constexpr int kPrefillThreads = 128;

// Load 8 consecutive cache elements as T (dequantising fp8).
template <typename T, int KIND>
__device__ __forceinline__ void load8(const typename CacheTraits<T, KIND>::storage* p, float s,
                                      T* dst) {
  using Tr = CacheTraits<T, KIND>;
  using S = typename Tr::storage;
  if constexpr (std::is_same<S, T>::value) {
    const auto r = load_vec<T, 8>(p);
#pragma unroll
    for (int i = 0; i < 8; ++i) dst[i] = r.v[i];
  } else {
    const auto r = load_vec<S, 8>(p);
#pragma unroll
    for (int i = 0; i < 8; ++i) dst[i] = from_float<T>(Tr::load(&r.v[i], s));
  }
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
               "r"(pred ? 16 : 0));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
__device__ __forceinline__ void cp_async_wait1() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group 1;\n" ::);
#endif
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
#endif
}
// Four transposed 8x8 b16 matrices from shared memory (B fragments of two n8 tiles).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, const void* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
#endif
}

template <int HD> constexpr int prefill_smem_bytes(int elem) { return 2 * 2 * BN * (HD + 8) * elem; }

template <typename T, int KIND, int HD>
__global__ void __launch_bounds__(kPrefillThreads)
prefill_attention_mma_kernel(T* __restrict__ out, int64_t out_stride, const T* __restrict__ q,
                             int64_t q_stride,
                             const typename CacheTraits<T, KIND>::storage* __restrict__ kc,
                             const typename CacheTraits<T, KIND>::storage* __restrict__ vc,
                             const int* __restrict__ block_tables, int mbps,
                             const int* __restrict__ seq_lens, const int* __restrict__ qsl,
                             int num_heads, int num_kv_heads, int bs_shift, float scale,
                             int window, const float* k_scale, const float* v_scale) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using Mma = MmaOp<T>;
  constexpr int KP = HD + 8;  // padded smem row (K and V tiles are both [BN][KP], row-major)
  // Two stages of (K tile, V tile): the next tile is fetched (cp.async) while this one is used.
  extern __shared__ __align__(16) unsigned char prefill_smem[];
  T* const smem = reinterpret_cast<T*>(prefill_smem);

  const int seq = blockIdx.y, kvh = blockIdx.z;
  const int G = num_heads / num_kv_heads;
  const int q0 = qsl[seq];
  const int qlen = qsl[seq + 1] - q0;
  const int nrows = qlen * G;
  // Heaviest (latest, longest causal range) tiles first for a better tail.
  const int tile_r0 = (gridDim.x - 1 - blockIdx.x) * BM;
  if (tile_r0 >= nrows) return;
  const int seq_len = seq_lens[seq];
  const int ctx = seq_len - qlen;  // cached prefix length
  const float ks = (KIND == kFp8E4M3 || KIND == kFp8E5M2) ? *k_scale : 1.f;
  const float vs = (KIND == kFp8E4M3 || KIND == kFp8E5M2) ? *v_scale : 1.f;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gid = lane >> 2, tq = lane & 3;
  const int ra = tile_r0 + warp * 16 + gid, rb = ra + 8;
  const bool va = ra < nrows, vb = rb < nrows;
  const int qpa = ctx + ra / G, qpb = ctx + rb / G;
  const int warp_qpos_min = ctx + (tile_r0 + warp * 16) / G;  // smallest query position of the warp

  // Q fragments (A operand, row-major 16 x HD per warp), straight from global memory.
  uint32_t qa[HD / 16][4];
  {
    const T* pa = q + (int64_t)(q0 + ra / G) * q_stride + (int64_t)(kvh * G + ra % G) * HD;
    const T* pb = q + (int64_t)(q0 + rb / G) * q_stride + (int64_t)(kvh * G + rb % G) * HD;
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
      const int c = kk * 16 + tq * 2;
      qa[kk][0] = va ? *reinterpret_cast<const uint32_t*>(pa + c) : 0u;
      qa[kk][1] = vb ? *reinterpret_cast<const uint32_t*>(pb + c) : 0u;
      qa[kk][2] = va ? *reinterpret_cast<const uint32_t*>(pa + c + 8) : 0u;
      qa[kk][3] = vb ? *reinterpret_cast<const uint32_t*>(pb + c + 8) : 0u;
    }
  }

  float o[HD / 8][4];
#pragma unroll
  for (int i = 0; i < HD / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;
  const float sl2 = scale * 1.4426950408889634f;

  const int last_row = min(nrows, tile_r0 + BM) - 1;
  const int qpos_min = ctx + tile_r0 / G, qpos_max = ctx + last_row / G;
  int kv_begin = window > 0 ? max(0, qpos_min - window + 1) : 0;
  kv_begin = (kv_begin / BN) * BN;
  const int kv_end = qpos_max + 1;
  const int* bt = block_tables + (int64_t)seq * mbps;

  using S = typename CacheTraits<T, KIND>::storage;
  auto load_tile = [&](int stage, int n0) {
    T* Ks = smem + stage * 2 * BN * KP;
    T* Vs = Ks + BN * KP;
    constexpr int CPR = HD / 8;                  // 16-byte chunks per row
    constexpr int RPI = kPrefillThreads / CPR;   // rows per pass of the block
    const int c = (tid % CPR) * 8;
#pragma unroll
    for (int j = 0; j < BN / RPI; ++j) {
      const int key = tid / CPR + j * RPI;
      const int kpos = n0 + key;
      const bool ok = kpos < kv_end;
      int64_t off = 0;
      if (ok) {  // block sizes are powers of two here: shift / mask instead of div / mod
        const int64_t page = bt[kpos >> bs_shift];
        off = ((((page << bs_shift) | (kpos & ((1 << bs_shift) - 1)))) * num_kv_heads + kvh) * HD + c;
      }
      if constexpr (std::is_same<S, T>::value) {
        cp_async16(&Ks[key * KP + c], kc + off, ok);  // zero-fills past kv_end
        cp_async16(&Vs[key * KP + c], vc + off, ok);
      } else {
        alignas(16) T kv8[8];
        alignas(16) T vv8[8];
        if (ok) {
          load8<T, KIND>(kc + off, ks, kv8);
          load8<T, KIND>(vc + off, vs, vv8);
        } else {
#pragma unroll
          for (int i = 0; i < 8; ++i) kv8[i] = vv8[i] = from_float<T>(0.f);
        }
        *reinterpret_cast<uint4*>(&Ks[key * KP + c]) = *reinterpret_cast<const uint4*>(kv8);
        *reinterpret_cast<uint4*>(&Vs[key * KP + c]) = *reinterpret_cast<const uint4*>(vv8);
      }
    }
  };

  if (kv_begin < kv_end) load_tile(0, kv_begin);
  cp_async_commit();
  int it = 0;
  for (int n0 = kv_begin; n0 < kv_end; n0 += BN, ++it) {
    const int stage = it & 1;
    if (n0 + BN < kv_end) load_tile(stage ^ 1, n0 + BN);
    cp_async_commit();
    cp_async_wait1();
    __syncthreads();
    const T* Ks = smem + stage * 2 * BN * KP;
    const T* Vs = Ks + BN * KP;

    float s[BN / 8][4];
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < HD / 16; kk += 2) {  // B fragments of two k-steps per ldmatrix.x4
        uint32_t kb[4];
        ldmatrix_x4(kb, &Ks[(nt * 8 + (lane & 7)) * KP + kk * 16 + (lane >> 3) * 8]);
        Mma::run(s[nt], qa[kk], kb[0], kb[1]);
        Mma::run(s[nt], qa[kk + 1], kb[2], kb[3]);
      }
    }
    // Scale, mask, row max.
    float mx_a = -INFINITY, mx_b = -INFINITY;
    // Tiles entirely below the diagonal of every row of this warp (and no window) need no mask.
    const bool full = window <= 0 && va && vb && n0 + BN - 1 <= warp_qpos_min;
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = n0 + nt * 8 + tq * 2 + (e & 1);
        const bool top = e < 2;
        const int qp = top ? qpa : qpb;
        bool ok = full || ((top ? va : vb) && key <= qp && (window <= 0 || qp - key < window));
        const float x = ok ? s[nt][e] * sl2 : -INFINITY;
        s[nt][e] = x;
        if (top) mx_a = fmaxf(mx_a, x); else mx_b = fmaxf(mx_b, x);
      }
    }
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
    float base_a, base_b;
    const float corr_a = online_softmax_max(m_a, mx_a, base_a);
    const float corr_b = online_softmax_max(m_b, mx_b, base_b);
    float sum_a = 0.f, sum_b = 0.f;
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
      s[nt][0] = exp2f(s[nt][0] - base_a);
      s[nt][1] = exp2f(s[nt][1] - base_a);
      s[nt][2] = exp2f(s[nt][2] - base_b);
      s[nt][3] = exp2f(s[nt][3] - base_b);
      sum_a += s[nt][0] + s[nt][1];
      sum_b += s[nt][2] + s[nt][3];
    }
    l_a = l_a * corr_a + sum_a;
    l_b = l_b * corr_b + sum_b;
#pragma unroll
    for (int dt = 0; dt < HD / 8; ++dt) {
      o[dt][0] *= corr_a;
      o[dt][1] *= corr_a;
      o[dt][2] *= corr_b;
      o[dt][3] *= corr_b;
    }
    // O += P V
#pragma unroll
    for (int kc2 = 0; kc2 < BN / 16; ++kc2) {
      uint32_t pa[4];
      pa[0] = Mma::pack(s[2 * kc2][0], s[2 * kc2][1]);
      pa[1] = Mma::pack(s[2 * kc2][2], s[2 * kc2][3]);
      pa[2] = Mma::pack(s[2 * kc2 + 1][0], s[2 * kc2 + 1][1]);
      pa[3] = Mma::pack(s[2 * kc2 + 1][2], s[2 * kc2 + 1][3]);
#pragma unroll
      for (int dt = 0; dt < HD / 8; dt += 2) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, &Vs[(kc2 * 16 + (lane & 15)) * KP + (dt + (lane >> 4)) * 8]);
        Mma::run(o[dt], pa, vb[0], vb[1]);
        Mma::run(o[dt + 1], pa, vb[2], vb[3]);
      }
    }
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }

  l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
  l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
  l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
  l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
  const float ia = l_a > 0.f ? 1.f / l_a : 0.f, ib = l_b > 0.f ? 1.f / l_b : 0.f;
  T* oa = out + (int64_t)(q0 + ra / G) * out_stride + (int64_t)(kvh * G + ra % G) * HD;
  T* ob = out + (int64_t)(q0 + rb / G) * out_stride + (int64_t)(kvh * G + rb % G) * HD;
#pragma unroll
  for (int dt = 0; dt < HD / 8; ++dt) {
    const int c = dt * 8 + tq * 2;
    if (va) *reinterpret_cast<uint32_t*>(oa + c) = Mma::pack(o[dt][0] * ia, o[dt][1] * ia);
    if (vb) *reinterpret_cast<uint32_t*>(ob + c) = Mma::pack(o[dt][2] * ib, o[dt][3] * ib);
  }
#endif
}

// Opt in to > 48 KB of dynamic shared memory (once per instantiation and process; the
// attribute is per function, valid on every device of the same architecture).
template <typename T, int KIND, int HD>
bool set_smem() {
  static const bool ok =
      cudaFuncSetAttribute(prefill_attention_mma_kernel<T, KIND, HD>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                           prefill_smem_bytes<HD>(sizeof(T))) == cudaSuccess;
  return ok;
}

template <typename T, int KIND>
cudaError_t launch_mma(int head_dim, void* out, int64_t out_stride, const void* q,
                       int64_t q_stride, const void* kc, const void* vc, const int* bt, int mbps,
                       const int* seq_lens, const int* qsl, int num_seqs, int max_query_len,
                       int num_heads, int num_kv_heads, int block_size, float scale, int window,
                       const float* k_scale, const float* v_scale, cudaStream_t stream) {
  using S = typename CacheTraits<T, KIND>::storage;
  const int G = num_heads / num_kv_heads;
  int bs_shift = 0;
  while ((1 << bs_shift) < block_size) ++bs_shift;
  const int64_t tiles = ((int64_t)max_query_len * G + BM - 1) / BM;
  if (num_seqs > 65535 || num_kv_heads > 65535) return cudaErrorInvalidValue;
  const dim3 grid((unsigned)tiles, num_seqs, num_kv_heads);
  switch (head_dim) {
    case 64:
      if (!set_smem<T, KIND, 64>()) return cudaErrorInvalidValue;
      prefill_attention_mma_kernel<T, KIND, 64><<<grid, kPrefillThreads,
                                                   prefill_smem_bytes<64>(sizeof(T)), stream>>>(
          (T*)out, out_stride, (const T*)q, q_stride, (const S*)kc, (const S*)vc, bt, mbps,
          seq_lens, qsl, num_heads, num_kv_heads, bs_shift, scale, window, k_scale, v_scale);
      break;
    case 128:
      if (!set_smem<T, KIND, 128>()) return cudaErrorInvalidValue;
      prefill_attention_mma_kernel<T, KIND, 128><<<grid, kPrefillThreads,
                                                    prefill_smem_bytes<128>(sizeof(T)), stream>>>(
          (T*)out, out_stride, (const T*)q, q_stride, (const S*)kc, (const S*)vc, bt, mbps,
          seq_lens, qsl, num_heads, num_kv_heads, bs_shift, scale, window, k_scale, v_scale);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch_mma(int cache_dtype, int dtype, int head_dim, void* out, int64_t out_stride,
                         const void* q, int64_t q_stride, const void* kc, const void* vc,
                         const int* bt, int mbps, const int* seq_lens, const int* qsl,
                         int num_seqs, int max_query_len, int num_heads, int num_kv_heads,
                         int block_size, float scale, int window, const float* k_scale,
                         const float* v_scale, cudaStream_t stream) {
#define LLMCORE_MMA_ARGS                                                                  \
  head_dim, out, out_stride, q, q_stride, kc, vc, bt, mbps, seq_lens, qsl, num_seqs,      \
      max_query_len, num_heads, num_kv_heads, block_size, scale, window, k_scale, v_scale, \
      stream
  if (cache_dtype == dtype) return launch_mma<T, -1>(LLMCORE_MMA_ARGS);
  if (k_scale == nullptr || v_scale == nullptr) return cudaErrorInvalidValue;
  if (cache_dtype == kFp8E4M3) return launch_mma<T, kFp8E4M3>(LLMCORE_MMA_ARGS);
  if (cache_dtype == kFp8E5M2) return launch_mma<T, kFp8E5M2>(LLMCORE_MMA_ARGS);
#undef LLMCORE_MMA_ARGS
  return cudaErrorInvalidValue;
}

}  // namespace
#endif  // !HIP

cudaError_t prefill_attention(void* out, int64_t out_stride, const void* q, int64_t q_stride,
                              const void* key_cache, const void* value_cache,
                              const int* block_tables, int max_blocks_per_seq, const int* seq_lens,
                              const int* query_start_loc, int num_tokens, int num_seqs,
                              int max_query_len, int num_heads, int num_kv_heads, int head_dim,
                              int block_size, float scale, int sliding_window, int dtype,
                              int cache_dtype, const float* k_scale, const float* v_scale,
                              int use_tensor_cores, cudaStream_t stream) {
  if (num_tokens <= 0 || num_seqs <= 0) return cudaSuccess;
  if (num_kv_heads <= 0 || num_heads % num_kv_heads != 0 || block_size <= 0)
    return cudaErrorInvalidValue;
#if !(defined(LLMCORE_HIP) || defined(__HIP_PLATFORM_AMD__))
  const bool pow2_blocks = (block_size & (block_size - 1)) == 0;
  if (use_tensor_cores && pow2_blocks && (dtype == kFloat16 || dtype == kBFloat16) &&
      max_query_len > 0) {
    if (current_device_has_mma()) {
      if (dtype == kFloat16)
        return dispatch_mma<half_t>(cache_dtype, dtype, head_dim, out, out_stride, q, q_stride,
                                    key_cache, value_cache, block_tables, max_blocks_per_seq,
                                    seq_lens, query_start_loc, num_seqs, max_query_len,
                                    num_heads, num_kv_heads, block_size, scale, sliding_window,
                                    k_scale, v_scale, stream);
      return dispatch_mma<bf16_t>(cache_dtype, dtype, head_dim, out, out_stride, q, q_stride,
                                  key_cache, value_cache, block_tables, max_blocks_per_seq,
                                  seq_lens, query_start_loc, num_seqs, max_query_len, num_heads,
                                  num_kv_heads, block_size, scale, sliding_window, k_scale,
                                  v_scale, stream);
    }
  }
#else
  (void)use_tensor_cores;
  (void)max_query_len;
#endif
  // Non-tensor-core path: one query row per token, no split.
  return paged_attention(out, out_stride, q, q_stride, key_cache, value_cache, block_tables,
                         max_blocks_per_seq, seq_lens, query_start_loc, num_tokens, num_seqs,
                         num_heads, num_kv_heads, head_dim, block_size, scale, sliding_window,
                         dtype, cache_dtype, k_scale, v_scale, 1, 0, nullptr, nullptr,
                         /*use_tensor_cores=*/0, stream);
}

}  // namespace llmcore
