// Paged attention decode (one query token per sequence), GQA-aware (one block serves up to
// GC query heads of one KV head, so K/V are read once for the group), split-K over the sequence
// with a flash-decoding style reduction for long contexts. Block sizes are a runtime parameter
// (8/16/32 tested); head_dim 64/128. The same kernel also serves varlen query rows
// (query_start_loc != nullptr), which is the non-tensor-core prefill path (fp32, HIP).
#include "llmcore_cuda/attention.h"

#include <type_traits>

namespace llmcore {
namespace {

constexpr int kThreads = 128;
constexpr int kMaxWarps = kThreads / 32;

// Transpose-reduce of C per-lane values across the warp: after the call, x[0] on lane l holds
// the full sum of value (l >> (log2(WARP_SIZE) - log2(C))). Compile-time recursion keeps x in
// registers.
template <int C, int O> struct ReduceScatter {
  static __device__ __forceinline__ void run(float* x, int lane) {
    if constexpr (C > 1) {
      const bool upper = (lane & O) != 0;
#pragma unroll
      for (int i = 0; i < C / 2; ++i) {
        const float lo = x[i], hi = x[i + C / 2];
        const float send = upper ? lo : hi;
        x[i] = (upper ? hi : lo) + shfl_xor(send, O);
      }
    } else {
      x[0] += shfl_xor(x[0], O);
    }
    ReduceScatter<(C > 1 ? C / 2 : 1), O / 2>::run(x, lane);
  }
};
template <int C> struct ReduceScatter<C, 0> {
  static __device__ __forceinline__ void run(float*, int) {}
};

template <typename T, int KIND, int HD, int GC>
__global__ void __launch_bounds__(kThreads)
paged_attention_kernel(T* __restrict__ out, int64_t out_stride, const T* __restrict__ q,
                       int64_t q_stride, const typename CacheTraits<T, KIND>::storage* __restrict__ kc,
                       const typename CacheTraits<T, KIND>::storage* __restrict__ vc,
                       const int* __restrict__ block_tables, int mbps, const int* __restrict__ seq_lens,
                       const int* __restrict__ qsl, int num_seqs, int num_heads, int num_kv_heads,
                       int block_size, float scale, int window, const float* k_scale,
                       const float* v_scale, int num_splits, int partition_size,
                       float* __restrict__ tmp_out, float* __restrict__ tmp_ml) {
  using Tr = CacheTraits<T, KIND>;
  using S = typename Tr::storage;
  constexpr int V = HD / WARP_SIZE;
  static_assert(V >= 1 && HD % WARP_SIZE == 0, "head_dim must be a multiple of WARP_SIZE");
  __shared__ float s_m[kMaxWarps][GC], s_l[kMaxWarps][GC];
  __shared__ float s_acc[kMaxWarps][GC][HD];

  const int row = blockIdx.x;
  const int split = blockIdx.z;
  const int G = num_heads / num_kv_heads;
  const int nchunks = (G + GC - 1) / GC;
  const int kvh = blockIdx.y / nchunks;
  const int h0 = kvh * G + (blockIdx.y % nchunks) * GC;
  const int gcount = min(GC, kvh * G + G - h0);
  const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
  const int nwarps = blockDim.x / WARP_SIZE;

  int seq, L;
  if (qsl != nullptr) {
    int lo = 0, hi = num_seqs - 1;  // largest s with qsl[s] <= row
    while (lo < hi) {
      const int mid = (lo + hi + 1) >> 1;
      if (qsl[mid] <= row) lo = mid; else hi = mid - 1;
    }
    seq = lo;
    L = seq_lens[seq] - (qsl[seq + 1] - row) + 1;
  } else {
    seq = row;
    L = seq_lens[row];
  }
  int start, end;
  decode_split_range(L, window, num_splits, partition_size, split, start, end);
  const float ks = (KIND == kFp8E4M3 || KIND == kFp8E5M2) ? *k_scale : 1.f;
  const float vs = (KIND == kFp8E4M3 || KIND == kFp8E5M2) ? *v_scale : 1.f;

  float qr[GC][V], acc[GC][V];
#pragma unroll
  for (int g = 0; g < GC; ++g) {
#pragma unroll
    for (int v = 0; v < V; ++v) {
      acc[g][v] = 0.f;
      qr[g][v] = 0.f;
    }
    if (g < gcount) {
      const auto qv = load_vec<T, V>(q + (int64_t)row * q_stride + (int64_t)(h0 + g) * HD + lane * V);
#pragma unroll
      for (int v = 0; v < V; ++v) qr[g][v] = to_float<T>(qv.v[v]) * scale * ks;
    }
  }

  // Each warp takes U consecutive tokens at a time (all their K/V loads in flight together).
  // The U*GC partial dot products are reduced with a transpose-reduce (reduce-scatter) butterfly,
  // after which lane `lane >> SHIFT` owns one (token, head) score: NV-1 shuffles instead of
  // 5*NV. Softmax state (m, l) lives on the lanes owning head g; p and the rescale factors are
  // shared through shared memory.
  // U tokens per warp step: 8 keeps more loads in flight while U*GC fits one warp.
  constexpr int U = GC <= 4 ? 8 : 4;
  constexpr int NV = U * GC;  // power of two, <= WARP_SIZE
  static_assert(NV <= WARP_SIZE && (NV & (NV - 1)) == 0, "bad U*GC");
  constexpr int LOG_NV = NV == 1 ? 0 : NV == 2 ? 1 : NV == 4 ? 2 : NV == 8 ? 3 : NV == 16 ? 4 : NV == 32 ? 5 : 6;
  constexpr int LOG_WS = WARP_SIZE == 64 ? 6 : 5;
  constexpr int SHIFT = LOG_WS - LOG_NV;
  __shared__ float s_p[kMaxWarps][NV];
  __shared__ float s_corr[kMaxWarps][GC];
  const int my_idx = lane >> SHIFT;
  const int my_u = my_idx / GC, my_g = my_idx % GC;
  float m_mine = -INFINITY, l_mine = 0.f;

  const int* bt = block_tables + (int64_t)seq * mbps;
  // Block sizes are powers of two in practice (8/16/32): shift and mask instead of a runtime
  // integer division per token, which costs more instructions than the token's dot products.
  const bool pow2_block = (block_size & (block_size - 1)) == 0;
  const int block_shift = __ffs(block_size) - 1;
  for (int t0 = start + warp * U; t0 < end; t0 += nwarps * U) {
    VecArr<S, V> kr[U], vr[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int t = min(t0 + u, end - 1);
      const int blk = pow2_block ? t >> block_shift : t / block_size;
      const int pos = pow2_block ? t & (block_size - 1) : t - blk * block_size;
      const int64_t off = (((int64_t)bt[blk] * block_size + pos) * num_kv_heads + kvh) * HD + lane * V;
      kr[u] = load_vec<S, V>(kc + off);
      vr[u] = load_vec<S, V>(vc + off);
    }
    float x[NV];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float kf[V];
      cache_to_float<T, KIND>(kr[u].v, kf);
#pragma unroll
      for (int g = 0; g < GC; ++g) {
        float d = 0.f;
#pragma unroll
        for (int v = 0; v < V; ++v) d += qr[g][v] * kf[v];
        x[u * GC + g] = d;
      }
    }
    // Reduce-scatter over the warp.
    ReduceScatter<NV, WARP_SIZE / 2>::run(x, lane);
    const bool valid = (t0 + my_u < end) && (my_g < gcount);
    const float sc = valid ? x[0] : -INFINITY;
    // max / sum over the U tokens of this head: lanes differing in the token bits of my_idx.
    float mx = sc;
#pragma unroll
    for (int bbit = 0; bbit < LOG_NV; ++bbit) {
      if ((1 << bbit) >= GC) mx = fmaxf(mx, shfl_xor(mx, 1 << (bbit + SHIFT)));
    }
    const float mn = fmaxf(m_mine, mx);
    const float base = mn == -INFINITY ? 0.f : mn;
    const float p = __expf(sc - base);
    const float corr = __expf(m_mine - base);
    float ps = p;
#pragma unroll
    for (int bbit = 0; bbit < LOG_NV; ++bbit) {
      if ((1 << bbit) >= GC) ps += shfl_xor(ps, 1 << (bbit + SHIFT));
    }
    l_mine = l_mine * corr + ps;
    m_mine = mn;
    if ((lane & ((1 << SHIFT) - 1)) == 0) {
      s_p[warp][my_idx] = p;
      if (my_u == 0) s_corr[warp][my_g] = corr;
    }
    warp_sync();
#pragma unroll
    for (int g = 0; g < GC; ++g) {
      const float c = s_corr[warp][g];
#pragma unroll
      for (int v = 0; v < V; ++v) acc[g][v] *= c;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float vf[V];
      cache_to_float<T, KIND>(vr[u].v, vf);
#pragma unroll
      for (int g = 0; g < GC; ++g) {
        const float pu = s_p[warp][u * GC + g];
#pragma unroll
        for (int v = 0; v < V; ++v) acc[g][v] += pu * vf[v];
      }
    }
    warp_sync();
  }

#pragma unroll
  for (int g = 0; g < GC; ++g) {
#pragma unroll
    for (int v = 0; v < V; ++v) s_acc[warp][g][lane * V + v] = acc[g][v];
  }
  if ((lane & ((1 << SHIFT) - 1)) == 0 && my_u == 0) {
    s_m[warp][my_g] = m_mine;
    s_l[warp][my_g] = l_mine;
  }
  __syncthreads();

  for (int idx = threadIdx.x; idx < gcount * HD; idx += blockDim.x) {
    const int g = idx / HD, d = idx % HD;
    float M = -INFINITY;
    for (int w = 0; w < nwarps; ++w) M = fmaxf(M, s_m[w][g]);
    float Ls = 0.f, A = 0.f;
    if (M != -INFINITY) {
      for (int w = 0; w < nwarps; ++w) {
        const float f = __expf(s_m[w][g] - M);
        Ls += s_l[w][g] * f;
        A += s_acc[w][g][d] * f;
      }
    }
    const float o = Ls > 0.f ? A / Ls * vs : 0.f;  // v_scale folded out of the loop
    if (num_splits == 1) {
      out[(int64_t)row * out_stride + (int64_t)(h0 + g) * HD + d] = from_float<T>(o);
    } else {
      const int64_t slot = ((int64_t)row * num_heads + h0 + g) * num_splits + split;
      tmp_out[slot * HD + d] = o;
      if (d == 0) {
        tmp_ml[slot * 2] = M;
        tmp_ml[slot * 2 + 1] = Ls;
      }
    }
  }
}

// Combine split partials: grid (num_rows, num_heads), blockDim >= head_dim.
template <typename T>
__global__ void paged_attention_reduce_kernel(T* __restrict__ out, int64_t out_stride,
                                              const float* __restrict__ tmp_out,
                                              const float* __restrict__ tmp_ml, int num_heads,
                                              int num_splits, int head_dim) {
  const int row = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
  const int64_t base = ((int64_t)row * num_heads + h) * num_splits;
  float M = -INFINITY;
  for (int s = 0; s < num_splits; ++s)
    if (tmp_ml[(base + s) * 2 + 1] > 0.f) M = fmaxf(M, tmp_ml[(base + s) * 2]);
  if (d >= head_dim) return;
  float W = 0.f, A = 0.f;
  if (M != -INFINITY) {
    for (int s = 0; s < num_splits; ++s) {
      const float ls = tmp_ml[(base + s) * 2 + 1];
      if (ls > 0.f) {
        const float w = ls * __expf(tmp_ml[(base + s) * 2] - M);
        W += w;
        A += w * tmp_out[(base + s) * head_dim + d];
      }
    }
  }
  out[(int64_t)row * out_stride + (int64_t)h * head_dim + d] = from_float<T>(W > 0.f ? A / W : 0.f);
}

// Combines the split partials into `out` (both decode kernels write the same partials).
template <typename T>
void launch_split_reduce(T* out, int64_t out_stride, const float* tmp_out, const float* tmp_ml,
                         int num_rows, int num_heads, int num_splits, int head_dim,
                         cudaStream_t stream) {
  const dim3 grid(num_rows, num_heads);
  paged_attention_reduce_kernel<T><<<grid, head_dim, 0, stream>>>(out, out_stride, tmp_out, tmp_ml,
                                                                  num_heads, num_splits, head_dim);
}

template <typename T, int KIND, int HD>
cudaError_t launch_typed(T* out, int64_t out_stride, const T* q, int64_t q_stride, const void* kc,
                         const void* vc, const int* bt, int mbps, const int* seq_lens,
                         const int* qsl, int num_rows, int num_seqs, int num_heads,
                         int num_kv_heads, int block_size, float scale, int window,
                         const float* k_scale, const float* v_scale, int num_splits,
                         int partition_size, float* tmp_out, float* tmp_ml, cudaStream_t stream) {
  using S = typename CacheTraits<T, KIND>::storage;
  const int G = num_heads / num_kv_heads;
  if (G == 1) {
    const dim3 grid(num_rows, num_kv_heads, num_splits);
    paged_attention_kernel<T, KIND, HD, 1><<<grid, kThreads, 0, stream>>>(
        out, out_stride, q, q_stride, (const S*)kc, (const S*)vc, bt, mbps, seq_lens, qsl,
        num_seqs, num_heads, num_kv_heads, block_size, scale, window, k_scale, v_scale,
        num_splits, partition_size, tmp_out, tmp_ml);
  } else if (G <= 4) {
    // GC = the group size rounded up to a power of two: a GC wider than the group would
    // spend half the dot products and shuffles on empty heads (Llama-3: G = 4).
    auto launch = [&](auto gc) {
      constexpr int GC = decltype(gc)::value;
      const dim3 grid(num_rows, num_kv_heads * ((G + GC - 1) / GC), num_splits);
      paged_attention_kernel<T, KIND, HD, GC><<<grid, kThreads, 0, stream>>>(
          out, out_stride, q, q_stride, (const S*)kc, (const S*)vc, bt, mbps, seq_lens, qsl,
          num_seqs, num_heads, num_kv_heads, block_size, scale, window, k_scale, v_scale,
          num_splits, partition_size, tmp_out, tmp_ml);
    };
    if (G <= 2) launch(std::integral_constant<int, 2>{});
    else launch(std::integral_constant<int, 4>{});
  } else {
    constexpr int GC = 8;
    const dim3 grid(num_rows, num_kv_heads * ((G + GC - 1) / GC), num_splits);
    paged_attention_kernel<T, KIND, HD, GC><<<grid, kThreads, 0, stream>>>(
        out, out_stride, q, q_stride, (const S*)kc, (const S*)vc, bt, mbps, seq_lens, qsl,
        num_seqs, num_heads, num_kv_heads, block_size, scale, window, k_scale, v_scale,
        num_splits, partition_size, tmp_out, tmp_ml);
  }
  if (num_splits > 1)
    launch_split_reduce<T>(out, out_stride, tmp_out, tmp_ml, num_rows, num_heads, num_splits, HD,
                           stream);
  return cudaGetLastError();
}

template <typename T, int KIND>
cudaError_t launch_hd(int head_dim, T* out, int64_t out_stride, const T* q, int64_t q_stride,
                      const void* kc, const void* vc, const int* bt, int mbps, const int* seq_lens,
                      const int* qsl, int num_rows, int num_seqs, int num_heads, int num_kv_heads,
                      int block_size, float scale, int window, const float* k_scale,
                      const float* v_scale, int num_splits, int partition_size, float* tmp_out,
                      float* tmp_ml, cudaStream_t stream) {
  switch (head_dim) {
    case 64:
      return launch_typed<T, KIND, 64>(out, out_stride, q, q_stride, kc, vc, bt, mbps, seq_lens,
                                       qsl, num_rows, num_seqs, num_heads, num_kv_heads,
                                       block_size, scale, window, k_scale, v_scale, num_splits,
                                       partition_size, tmp_out, tmp_ml, stream);
    case 128:
      return launch_typed<T, KIND, 128>(out, out_stride, q, q_stride, kc, vc, bt, mbps, seq_lens,
                                        qsl, num_rows, num_seqs, num_heads, num_kv_heads,
                                        block_size, scale, window, k_scale, v_scale, num_splits,
                                        partition_size, tmp_out, tmp_ml, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t paged_attention(void* out, int64_t out_stride, const void* q, int64_t q_stride,
                            const void* key_cache, const void* value_cache,
                            const int* block_tables, int max_blocks_per_seq, const int* seq_lens,
                            const int* query_start_loc, int num_rows, int num_seqs, int num_heads,
                            int num_kv_heads, int head_dim, int block_size, float scale,
                            int sliding_window, int dtype, int cache_dtype, const float* k_scale,
                            const float* v_scale, int num_splits, int partition_size,
                            float* tmp_out, float* tmp_ml, int use_tensor_cores,
                            cudaStream_t stream) {
  if (num_rows <= 0) return cudaSuccess;
  if (num_kv_heads <= 0 || num_heads % num_kv_heads != 0 || block_size <= 0)
    return cudaErrorInvalidValue;
  if (num_splits < 1) num_splits = 1;
  if (num_splits > 1 && (tmp_out == nullptr || tmp_ml == nullptr))
    return cudaErrorInvalidValue;
  if (num_splits > 65535) return cudaErrorInvalidValue;
  if ((cache_dtype == kFp8E4M3 || cache_dtype == kFp8E5M2) &&
      (k_scale == nullptr || v_scale == nullptr))
    return cudaErrorInvalidValue;
#if !(defined(LLMCORE_HIP) || defined(__HIP_PLATFORM_AMD__))
  const int64_t elem = dtype == kFloat32 ? 4 : 2;
  const bool q_aligned = reinterpret_cast<uintptr_t>(q) % 16 == 0 && (q_stride * elem) % 16 == 0;
  if (use_tensor_cores && query_start_loc == nullptr && q_aligned && num_kv_heads <= 65535 &&
      paged_attention_mma_supported(head_dim, num_heads, num_kv_heads, block_size, dtype,
                                    cache_dtype)) {
    cudaError_t err = paged_attention_mma(out, out_stride, q, q_stride, key_cache, value_cache,
                                          block_tables, max_blocks_per_seq, seq_lens, num_rows,
                                          num_heads, num_kv_heads, head_dim, block_size, scale,
                                          sliding_window, dtype, cache_dtype, k_scale, v_scale,
                                          num_splits, partition_size, tmp_out, tmp_ml, stream);
    if (err != cudaSuccess || num_splits == 1) return err;
    LLMCORE_DISPATCH_FLOAT(dtype, launch_split_reduce<scalar_t>((scalar_t*)out, out_stride, tmp_out,
                                                                tmp_ml, num_rows, num_heads,
                                                                num_splits, head_dim, stream));
    return cudaGetLastError();
  }
#else
  (void)use_tensor_cores;
#endif
#define LLMCORE_PA_ARGS                                                                       \
  head_dim, (scalar_t*)out, out_stride, (const scalar_t*)q, q_stride, key_cache, value_cache, \
      block_tables, max_blocks_per_seq, seq_lens, query_start_loc, num_rows, num_seqs,         \
      num_heads, num_kv_heads, block_size, scale, sliding_window, k_scale, v_scale,            \
      num_splits, partition_size, tmp_out, tmp_ml, stream
  LLMCORE_DISPATCH_FLOAT(dtype, {
    if (cache_dtype == dtype) return launch_hd<scalar_t, -1>(LLMCORE_PA_ARGS);
    if constexpr (std::is_same<scalar_t, float>::value) {
      return cudaErrorInvalidValue;  // fp8 caches need fp16/bf16 queries
    } else {
      if (cache_dtype == kFp8E4M3) return launch_hd<scalar_t, kFp8E4M3>(LLMCORE_PA_ARGS);
      if (cache_dtype == kFp8E5M2) return launch_hd<scalar_t, kFp8E5M2>(LLMCORE_PA_ARGS);
      return cudaErrorInvalidValue;
    }
  });
#undef LLMCORE_PA_ARGS
  return cudaSuccess;
}

}  // namespace llmcore
