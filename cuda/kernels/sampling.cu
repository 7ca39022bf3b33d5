// Greedy argmax and per-row temperature / top-k / top-p / min-p sampling without sorting the
// vocabulary: thresholds are found by 4-pass radix selection (8 bits a pass) on the bit patterns
// of the (positive) unnormalised probabilities, with count histograms for top-k and probability
// mass histograms for top-p; the token is then drawn by inverse CDF over the kept set.
#include "llmcore_cuda/sampling.h"

namespace llmcore {
namespace {

constexpr int kSampleThreads = 1024;
constexpr int kListCap = 8192;  // candidate probabilities kept in shared memory

__device__ __forceinline__ uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
// Keep in sync with llmcore.ops.reference.seeded_uniform.
__device__ __forceinline__ float seeded_uniform(uint64_t seed, uint64_t offset, uint64_t row) {
  const uint64_t h = splitmix64(splitmix64(seed ^ splitmix64(offset)) + row);
  return (float)(h >> 40) * (1.0f / 16777216.0f);
}

__device__ __forceinline__ void argmax_combine(float& v, int& i, float ov, int oi) {
  if (ov > v || (ov == v && oi < i) || (v != v)) { v = ov; i = oi; }
}

// Block-wide argmax (lowest index on ties, NaN ignored); result valid in all threads.
__device__ int block_argmax(float v, int i, float* sv, int* si) {
  const int lane = threadIdx.x % WARP_SIZE, wid = threadIdx.x / WARP_SIZE;
  const int nw = blockDim.x / WARP_SIZE;
#pragma unroll
  for (int m = WARP_SIZE / 2; m > 0; m >>= 1) {
    const float ov = shfl_xor(v, m);
    const int oi = shfl_xor(i, m);
    argmax_combine(v, i, ov, oi);
  }
  __syncthreads();
  if (lane == 0) { sv[wid] = v; si[wid] = i; }
  __syncthreads();
  if (wid == 0) {
    v = lane < nw ? sv[lane] : -INFINITY;
    i = lane < nw ? si[lane] : 0x7fffffff;
#pragma unroll
    for (int m = WARP_SIZE / 2; m > 0; m >>= 1) {
      const float ov = shfl_xor(v, m);
      const int oi = shfl_xor(i, m);
      argmax_combine(v, i, ov, oi);
    }
    if (lane == 0) si[0] = i;
  }
  __syncthreads();
  const int r = si[0];
  __syncthreads();
  return r;
}

template <typename T>
__device__ int row_argmax(const T* x, int vocab, float* sv, int* si) {
  float best = -INFINITY;
  int bi = 0x7fffffff;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = to_float<T>(x[i]);
    if (v > best || bi == 0x7fffffff) { if (v == v) { best = v; bi = i; } }
  }
  const int r = block_argmax(best, bi, sv, si);
  return r == 0x7fffffff ? 0 : r;
}

// Histogram update with warp aggregation: lanes hitting the same bin are combined before one
// shared-memory atomic (the top bins are hot; plain atomics serialise badly). bin < 0 = none.
// All lanes of the warp must call this together.
__device__ __forceinline__ void hist_add_count(unsigned int* h, int bin) {
  // Integer shared-memory atomics are cheap enough here (measured: match_any was slower).
  if (bin >= 0) atomicAdd(&h[bin], 1u);
}
__device__ __forceinline__ void hist_add_mass(float* h, int bin, float v) {
#if defined(LLMCORE_HIP) || defined(__HIP_PLATFORM_AMD__)
  if (bin >= 0) atomicAdd(&h[bin], v);
#else
  // Combine the lanes of up to 3 distinct bins with warp sums (the hot bins), then plain
  // atomics for whatever is left.
  const int lane = threadIdx.x & 31;
  unsigned todo = __ballot_sync(0xffffffffu, bin >= 0);
#pragma unroll 1
  for (int it = 0; it < 3 && todo; ++it) {
    const int src = __ffs(todo) - 1;
    const int b = __shfl_sync(0xffffffffu, bin, src);
    const bool mine = bin == b;
    const float sum = warp_sum(mine ? v : 0.f);
    if (lane == src) atomicAdd(&h[b], sum);
    todo &= ~__ballot_sync(0xffffffffu, mine);
  }
  if ((todo >> lane) & 1u) atomicAdd(&h[bin], v);
#endif
}

template <typename T>
__global__ void __launch_bounds__(kSampleThreads)
argmax_kernel(int64_t* out, const T* __restrict__ logits, int64_t stride, int vocab) {
  __shared__ float sv[32];
  __shared__ int si[32];
  const int r = row_argmax<T>(logits + (int64_t)blockIdx.x * stride, vocab, sv, si);
  if (threadIdx.x == 0) out[blockIdx.x] = r;
}

template <typename T>
__global__ void __launch_bounds__(kSampleThreads)
sample_kernel(int64_t* out, const T* __restrict__ logits, int64_t stride, int vocab,
              const float* temperature, const int* top_k, const float* top_p, const float* min_p,
              const float* uniform, uint64_t seed, uint64_t offset) {
  __shared__ float sv[32];
  __shared__ int si[32];
  __shared__ float red[32];
  __shared__ unsigned int hcnt[256];
  __shared__ float hmass[256];
  __shared__ int s_bin;
  __shared__ float s_aux;
  __shared__ int s_found;
  __shared__ int s_last;
  __shared__ int s_cnt;
  __shared__ float s_list[kListCap];
  const int b = blockIdx.x, tid = threadIdx.x;
  const T* x = logits + (int64_t)b * stride;
  const float temp = temperature ? temperature[b] : 1.f;
  if (!(temp > 0.f)) {
    const int r = row_argmax<T>(x, vocab, sv, si);
    if (tid == 0) out[b] = r;
    return;
  }
  const float inv_t = 1.f / temp;
  float mx = -INFINITY;
  for (int i = tid; i < vocab; i += blockDim.x) mx = fmaxf(mx, to_float<T>(x[i]));
  mx = block_max(mx, red);
  if (mx == -INFINITY || mx != mx) {
    if (tid == 0) out[b] = 0;
    return;
  }
  auto prob = [&](int i) { return __expf((to_float<T>(x[i]) - mx) * inv_t); };

  const int k = top_k ? top_k[b] : 0;
  const bool use_k = k > 0 && k < vocab;
  const float pp = top_p ? top_p[b] : 1.f;
  const bool use_p = pp < 1.f;
  const float t_m = min_p ? fmaxf(min_p[b], 0.f) : 0.f;

  // ---- candidate list. One statistics pass gives a lower bound `lo_c` on the top-k / top-p
  // thresholds (counts / masses below a few guesses); the probabilities >= lo_c are gathered
  // into shared memory and the radix passes run on that list. If it overflows, the passes
  // scan the whole vocabulary instead (same results, slower).
  float z_full = 0.f, lo_c = 0.f;
  bool listed = false;
  int nlist = 0;
  if (use_k || use_p) {
    // guesses g[0] > g[1] > ...: count of p >= g (top-k) and mass of p < g (top-p)
    constexpr int NG = 6;
    const float g[NG] = {0.3f, 0.1f, 1e-2f, 1e-3f, 1e-5f, 1e-7f};
    float cnt[NG], below[NG];
#pragma unroll
    for (int q = 0; q < NG; ++q) cnt[q] = below[q] = 0.f;
    for (int i = tid; i < vocab; i += blockDim.x) {
      const float p = prob(i);
      z_full += p;
#pragma unroll
      for (int q = 0; q < NG; ++q) {
        if (p >= g[q]) cnt[q] += 1.f; else below[q] += p;
      }
    }
    z_full = block_sum(z_full, red);
    float lo_cnt = (float)vocab;  // elements >= lo_c (upper bound)
    if (use_k) {
      // the k-th largest is >= the largest guess that at least k elements reach
#pragma unroll
      for (int q = NG - 1; q >= 0; --q) {
        const float c = block_sum(cnt[q], red);
        if (c >= (float)k) { lo_c = g[q]; lo_cnt = c; }
      }
    } else {
      // elements below g hold at most (1 - top_p) * z  =>  the top-p threshold is >= g; and
      // v0 = (1 - top_p) * z / vocab always qualifies
      const float slack = (1.f - pp) * z_full * 0.999f;
      lo_c = slack / (float)vocab;
#pragma unroll
      for (int q = NG - 1; q >= 0; --q) {
        const float bm = block_sum(below[q], red);
        const float c = block_sum(cnt[q], red);
        if (bm <= slack && g[q] > lo_c) { lo_c = g[q]; lo_cnt = c; }
      }
    }
    if (lo_cnt > (float)kListCap) goto no_list;  // would overflow: scan the vocabulary instead
    if (tid == 0) s_cnt = 0;
    __syncthreads();
    for (int base = 0; base < vocab; base += blockDim.x) {
      const int i = base + tid;
      float p = 0.f;
      if (i < vocab) p = prob(i);
      const bool c = i < vocab && p >= lo_c && p > 0.f;
#if defined(LLMCORE_HIP) || defined(__HIP_PLATFORM_AMD__)
      if (c) {
        const int pos = atomicAdd(&s_cnt, 1);
        if (pos < kListCap) s_list[pos] = p;
      }
#else
      const unsigned bal = __ballot_sync(0xffffffffu, c);
      if (bal) {
        const int lane = tid & 31;
        int basepos = 0;
        if (lane == __ffs(bal) - 1) basepos = atomicAdd(&s_cnt, __popc(bal));
        basepos = __shfl_sync(0xffffffffu, basepos, __ffs(bal) - 1);
        const int pos = basepos + __popc(bal & ((1u << lane) - 1u));
        if (c && pos < kListCap) s_list[pos] = p;
      }
#endif
    }
    __syncthreads();
    nlist = s_cnt;
    listed = nlist <= kListCap;
  }
no_list:
  const int nelem = listed ? nlist : vocab;
  auto val = [&](int j) { return listed ? s_list[j] : prob(j); };

  // ---- top-k: radix-select the k-th largest probability.
  float t_k = 0.f;
  if (use_k) {
    const float lo = lo_c;
    unsigned int prefix = 0, mask = 0;
    int remaining = k;
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int i = tid; i < 256; i += blockDim.x) hcnt[i] = 0;
      __syncthreads();
      for (int base = 0; base < nelem; base += blockDim.x) {  // uniform trip count per warp
        const int j = base + tid;
        int bin = -1;
        if (j < nelem) {
          const float p = val(j);
          const unsigned int u = __float_as_uint(p);
          if (p >= lo && (u & mask) == prefix) bin = (u >> shift) & 255u;
        }
        hist_add_count(hcnt, bin);
      }
      __syncthreads();
      if (tid == 0) {
        int cum = 0, bin = 0;
        for (bin = 255; bin > 0; --bin) {
          if (cum + (int)hcnt[bin] >= remaining) break;
          cum += hcnt[bin];
        }
        s_bin = bin;
        s_aux = __int_as_float(remaining - cum);
      }
      __syncthreads();
      prefix |= (unsigned int)s_bin << shift;
      mask |= 255u << shift;
      remaining = __float_as_int(s_aux);
      __syncthreads();
    }
    t_k = __uint_as_float(prefix);
  }

  // ---- top-p over the top-k set: largest v with mass(p >= v) >= top_p * mass(top-k set).
  float t_p = 0.f;
  if (use_p) {
    float z, lo;
    if (use_k) {
      // the top-k set is entirely in the list (t_k >= lo_c), or we scan everything
      float zz = 0.f, b3 = 0.f, b5 = 0.f, b7 = 0.f;
      for (int j = tid; j < nelem; j += blockDim.x) {
        const float p = val(j);
        if (p >= t_k) {
          zz += p;
          if (p < 1e-3f) b3 += p;
          if (p < 1e-5f) b5 += p;
          if (p < 1e-7f) b7 += p;
        }
      }
      z = block_sum(zz, red);
      b3 = block_sum(b3, red);
      b5 = block_sum(b5, red);
      b7 = block_sum(b7, red);
      const float slack = (1.f - pp) * z * 0.999f;
      lo = fmaxf(t_k, slack / (float)vocab);
      if (b7 <= slack) lo = fmaxf(lo, 1e-7f);
      if (b5 <= slack) lo = fmaxf(lo, 1e-5f);
      if (b3 <= slack) lo = fmaxf(lo, 1e-3f);
    } else {
      z = z_full;
      lo = lo_c;
    }
    const float target = pp * z;
    unsigned int prefix = 0, mask = 0;
    float above = 0.f;
    bool ok = true;
    for (int shift = 24; shift >= 0 && ok; shift -= 8) {
      for (int i = tid; i < 256; i += blockDim.x) hmass[i] = 0.f;
      __syncthreads();
      for (int base = 0; base < nelem; base += blockDim.x) {
        const int j = base + tid;
        int bin = -1;
        float p = 0.f;
        if (j < nelem) {
          p = val(j);
          const unsigned int u = __float_as_uint(p);
          if (p >= lo && (u & mask) == prefix) bin = (u >> shift) & 255u;
        }
        hist_add_mass(hmass, bin, bin >= 0 ? p : 0.f);
      }
      __syncthreads();
      if (tid == 0) {
        float cum = above;
        int bin, lowest = -1;
        for (bin = 255; bin >= 0; --bin) {
          if (hmass[bin] > 0.f) lowest = bin;
          if (hmass[bin] > 0.f && cum + hmass[bin] >= target) break;
          cum += hmass[bin];
        }
        if (bin < 0) {  // rounding: take the lowest non-empty bin (keeps the most)
          bin = lowest;
          cum -= lowest >= 0 ? hmass[lowest] : 0.f;
        }
        s_bin = bin;
        s_aux = cum;
      }
      __syncthreads();
      if (s_bin < 0) {
        ok = false;
      } else {
        prefix |= (unsigned int)s_bin << shift;
        mask |= 255u << shift;
        above = s_aux;
      }
      __syncthreads();
    }
    if (ok) t_p = __uint_as_float(prefix);
  }

  // ---- min-p: relative to the max probability (which is exp(0) = 1 here).
  const float thr = fmaxf(fmaxf(t_k, t_p), t_m);

  // ---- inverse CDF over the kept set, in vocabulary order (contiguous chunk per thread).
  const int chunk = (vocab + blockDim.x - 1) / blockDim.x;
  const int c0 = min(vocab, tid * chunk), c1 = min(vocab, c0 + chunk);
  float local = 0.f;
  int last_kept = -1;
  for (int i = c0; i < c1; ++i) {
    const float p = prob(i);
    if (p >= thr && p > 0.f) { local += p; last_kept = i; }
  }
  // Block exclusive scan of `local`.
  const int lane = tid % WARP_SIZE, wid = tid / WARP_SIZE, nw = blockDim.x / WARP_SIZE;
  float incl = local;
#pragma unroll
  for (int d = 1; d < WARP_SIZE; d <<= 1) {
    const float o = shfl_up(incl, d);
    if (lane >= d) incl += o;
  }
  if (tid == 0) { s_found = -1; s_last = -1; }
  __syncthreads();
  if (lane == WARP_SIZE - 1) red[wid] = incl;
  if (last_kept >= 0) atomicMax(&s_last, last_kept);
  __syncthreads();
  float warp_off = 0.f, total = 0.f;
  for (int w = 0; w < nw; ++w) {
    if (w < wid) warp_off += red[w];
    total += red[w];
  }
  const float excl = warp_off + incl - local;
  const float u = uniform ? uniform[b] : seeded_uniform(seed, offset, (uint64_t)b);
  const float target = u * total;
  if (local > 0.f && target >= excl && target < excl + local) {
    float cum = excl;
    int pick = last_kept;
    for (int i = c0; i < c1; ++i) {
      const float p = prob(i);
      if (p >= thr && p > 0.f) {
        cum += p;
        if (cum > target) { pick = i; break; }
      }
    }
    s_found = pick;
  }
  __syncthreads();
  if (tid == 0) {
    int r = s_found >= 0 ? s_found : s_last;
    out[b] = r >= 0 ? r : 0;
  }
}

}  // namespace

cudaError_t argmax(int64_t* out, const void* logits, int64_t logits_stride, int batch, int vocab,
                   int dtype, cudaStream_t stream) {
  if (batch <= 0) return cudaSuccess;
  if (vocab <= 0) return cudaErrorInvalidValue;
  LLMCORE_DISPATCH_FLOAT(dtype, {
    argmax_kernel<scalar_t><<<batch, kSampleThreads, 0, stream>>>(
        out, (const scalar_t*)logits, logits_stride, vocab);
  });
  return cudaGetLastError();
}

cudaError_t sample(int64_t* out, const void* logits, int64_t logits_stride, int batch, int vocab,
                   int dtype, const float* temperature, const int* top_k, const float* top_p,
                   const float* min_p, const float* uniform, uint64_t seed, uint64_t offset,
                   cudaStream_t stream) {
  if (batch <= 0) return cudaSuccess;
  if (vocab <= 0) return cudaErrorInvalidValue;
  LLMCORE_DISPATCH_FLOAT(dtype, {
    sample_kernel<scalar_t><<<batch, kSampleThreads, 0, stream>>>(
        out, (const scalar_t*)logits, logits_stride, vocab, temperature, top_k, top_p, min_p,
        uniform, seed, offset);
  });
  return cudaGetLastError();
}

}  // namespace llmcore
