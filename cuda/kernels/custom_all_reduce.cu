// Custom all-reduce over CUDA IPC buffers (tensor parallelism on one host).
//
// Buffers. Every rank owns one signal area (ArSignal) and one staging buffer, both mapped by
// every peer (CUDA IPC). A launch first copies this rank's input into its own staging buffer
// (skipped when the input IS the staging buffer), then:
//   one-shot: barrier(start); out[i] = sum over ranks r of staging_r[i]; barrier(end).
//   two-shot: barrier(start); reduce-scatter: rank r sums slice r of every staging buffer and
//             writes the sum back into slice r of its OWN staging buffer (only rank r ever reads
//             slice r in this phase, so the in-place write races with nobody); barrier(mid);
//             all-gather: out's slice q = slice q of rank q's staging buffer; barrier(end).
// Sums run in float32 in rank order 0..W-1, so every rank gets bitwise the same result.
//
// Work split. Element vectors (16 bytes) are dealt to threads by one grid-stride rule shared by
// every rank and phase: thread t of block b takes vector (one-shot) or slice offset (two-shot)
// i = b * threads + t, then i += blocks * threads. So block b of any rank only ever
// reads the vectors block b of the other ranks copied / reduced: a barrier per block (block b
// waits for block b of every peer) is all the synchronisation a phase needs, and no block waits
// for another block of its own rank. Slices are rounded to 8 vectors (128 bytes) so two
// slices never share a cache line.
//
// Barrier (per block and phase). After __syncthreads (the block's copies / reduced writes /
// reads are done), thread 0 issues fence.acq_rel.sys and stores the launch's epoch into
// flags[phase][block][rank] of every rank (st.relaxed.sys), then polls flags[phase][block][r] of
// its own signal area for every r (ld.relaxed.sys) until each holds the epoch, issues
// fence.acq_rel.sys again, and __syncthreads releases the block. Fence + strong store and strong
// load + fence are the PTX memory model's release and acquire patterns at system scope; with
// the two __syncthreads (CTA barriers are cumulative) they order every access the block made
// before the barrier before every access any peer's block makes after it, across GPUs and
// processes. Peer data is loaded with ld.global.cg (L2, never a stale L1 line).
//   start: the peers' staging copies of this launch are visible.
//   mid:   the peers' reduced slices are visible.
//   end:   the peers have finished reading this rank's staging buffer, so the next launch's copy
//          into it (which runs after this kernel has completely finished, by stream order) cannot
//          clobber data a peer still reads. It also bounds how far ranks drift: a rank cannot
//          store epoch e+1 into any flag before every peer has stored epoch e into the end flags,
//          so a waiter only ever sees the epoch it waits for or the one before it: equality
//          tests are exact, flags are never reset, and the 32-bit epochs may wrap.
//
// Epochs and CUDA graphs. Block b's epoch is counter[b] + 1, read from this rank's own signal
// area at kernel start and written back by thread 0 after the end barrier: the count lives in
// device memory and advances on the device, so a captured launch replays correctly any number
// of times. Nothing launch-specific is baked into a graph, and the copy into the staging buffer
// is part of the kernel, so the caller's input needs no registered address. Ranks agree on every
// block's epoch because they make the same sequence of launches with the same grids
// (ar_grid_blocks is a function of size, world, algo and max_blocks only). Launches of one rank
// must be stream-ordered (counter[b] is read-modify-written per launch).
//
// Progress. A block spins until its peers' block arrives, so all ranks' kernels must be running
// at once: grids are at most max_blocks (<= kArMaxBlocks, callers keep it under the SM count).
// NVLink multicast (NVLS) is not used.
#include "llmcore_cuda/custom_all_reduce.h"

#include <string.h>

namespace llmcore {

static_assert(sizeof(ArSignal) <= 8192, "signal area");

size_t ar_signal_bytes() { return (sizeof(ArSignal) + 4095) / 4096 * 4096; }
size_t ar_counter_offset() { return offsetof(ArSignal, counter); }

namespace {

constexpr int kPhaseStart = 0, kPhaseMid = 1, kPhaseEnd = 2;
constexpr int64_t kSliceAlignVecs = 8;  // 8 x 16 B = one 128-byte line

// ---- flag accesses at system scope (the peer is another GPU, or another process's context).
// Release = fence.acq_rel.sys then relaxed stores; acquire = relaxed loads then fence.acq_rel.sys
// (the PTX memory model's release / acquire patterns). One fence per barrier instead of one per
// peer: a st.release per peer would wait for the previous remote store's round trip each time.
__device__ __forceinline__ void fence_sys() {
#if defined(LLMCORE_HIP) || defined(__HIP_PLATFORM_AMD__)
  __threadfence_system();
#else
  asm volatile("fence.acq_rel.sys;" ::: "memory");
#endif
}

__device__ __forceinline__ void flag_store_relaxed(uint32_t* p, uint32_t v) {
#if defined(LLMCORE_HIP) || defined(__HIP_PLATFORM_AMD__)
  __atomic_store_n(p, v, __ATOMIC_RELAXED);  // HIP's __atomic_* default to system scope
#else
  asm volatile("st.relaxed.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
#endif
}

__device__ __forceinline__ uint32_t flag_load_relaxed(const uint32_t* p) {
#if defined(LLMCORE_HIP) || defined(__HIP_PLATFORM_AMD__)
  return __atomic_load_n(p, __ATOMIC_RELAXED);
#else
  uint32_t v;
  asm volatile("ld.relaxed.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
#endif
}

// Loads of staging data written by another rank (or by this block before a barrier): L2 only.
__device__ __forceinline__ uint4 load_shared_vec(const uint4* p) {
#if defined(LLMCORE_HIP) || defined(__HIP_PLATFORM_AMD__)
  return *p;
#else
  return __ldcg(p);
#endif
}

// Thread 0 of the block announces the epoch to every rank and waits for every rank's epoch.
// The pointers are indexed by constants only (a runtime index into the kernel's parameter
// struct would copy it to the stack); `self` is this rank's own signal area.
template <int W>
__device__ __forceinline__ void block_barrier(const ArPeers& peers, ArSignal* self, int rank,
                                              int phase, uint32_t epoch) {
  __syncthreads();
  if (threadIdx.x == 0) {
    fence_sys();  // release: the block's accesses so far (ordered by __syncthreads) go first
#pragma unroll
    for (int r = 0; r < W; ++r)
      flag_store_relaxed(&static_cast<ArSignal*>(peers.signal[r])->flags[phase][blockIdx.x][rank],
                         epoch);
#pragma unroll
    for (int r = 0; r < W; ++r) {
      const uint32_t* f = &self->flags[phase][blockIdx.x][r];
      while (flag_load_relaxed(f) != epoch) {
      }
    }
    fence_sys();  // acquire: the peers' accesses before their announcement are visible now
  }
  __syncthreads();
}

// Element <-> float conversion per 32-bit word of a 16-byte vector, on values in registers (no
// address-taking, which would move the vectors to the stack).
__device__ __forceinline__ uint32_t bf16_bits_rn(float x) {
  const uint32_t u = __float_as_uint(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u;  // NaN
  return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;          // round to nearest even, like torch
}

template <typename T> struct WordCvt;
template <> struct WordCvt<float> {
  static constexpr int kPer = 1;
  static __device__ __forceinline__ void to_float(uint32_t w, float* f) {
    f[0] = __uint_as_float(w);
  }
  static __device__ __forceinline__ uint32_t from_float(const float* f) {
    return __float_as_uint(f[0]);
  }
};
template <> struct WordCvt<half_t> {
  static constexpr int kPer = 2;
  static __device__ __forceinline__ void to_float(uint32_t w, float* f) {
    f[0] = __half2float(__ushort_as_half((unsigned short)(w & 0xffffu)));
    f[1] = __half2float(__ushort_as_half((unsigned short)(w >> 16)));
  }
  static __device__ __forceinline__ uint32_t from_float(const float* f) {
    return (uint32_t)__half_as_ushort(__float2half_rn(f[0])) |
           ((uint32_t)__half_as_ushort(__float2half_rn(f[1])) << 16);
  }
};
template <> struct WordCvt<bf16_t> {
  static constexpr int kPer = 2;
  static __device__ __forceinline__ void to_float(uint32_t w, float* f) {
    f[0] = __uint_as_float(w << 16);
    f[1] = __uint_as_float(w & 0xffff0000u);
  }
  static __device__ __forceinline__ uint32_t from_float(const float* f) {
    return bf16_bits_rn(f[0]) | (bf16_bits_rn(f[1]) << 16);
  }
};

__device__ __forceinline__ uint32_t word_of(const uint4& v, int k) {
  return k == 0 ? v.x : k == 1 ? v.y : k == 2 ? v.z : v.w;
}

// The W vectors' elements summed in rank order, in float32, rounded once to T.
template <typename T, int W>
__device__ __forceinline__ uint4 sum_vectors(const uint4 (&v)[W]) {
  using C = WordCvt<T>;
  constexpr int P = C::kPer;
  float acc[4 * P];
#pragma unroll
  for (int k = 0; k < 4; ++k) C::to_float(word_of(v[0], k), &acc[k * P]);
#pragma unroll
  for (int r = 1; r < W; ++r) {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      float f[P];
      C::to_float(word_of(v[r], k), f);
#pragma unroll
      for (int j = 0; j < P; ++j) acc[k * P + j] += f[j];
    }
  }
  uint4 out;
  out.x = C::from_float(&acc[0]);
  out.y = C::from_float(&acc[P]);
  out.z = C::from_float(&acc[2 * P]);
  out.w = C::from_float(&acc[3 * P]);
  return out;
}

// Loads vector idx of every rank's staging buffer (all W loads in flight at once).
template <int W>
__device__ __forceinline__ void load_all_ranks(const ArPeers& peers, int64_t idx, uint4 (&v)[W]) {
#pragma unroll
  for (int r = 0; r < W; ++r)
    v[r] = load_shared_vec(static_cast<const uint4*>(peers.staging[r]) + idx);
}

template <typename T, int W>
__global__ void __launch_bounds__(kArThreads)
    one_shot_kernel(ArPeers peers, ArSignal* self, uint4* mine, int rank, const uint4* in,
                    uint4* out, int64_t nvec) {
  const uint32_t epoch = self->counter[blockIdx.x] + 1;
  const int64_t first = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  if (in != mine) {
    for (int64_t i = first; i < nvec; i += stride) mine[i] = in[i];
  }
  block_barrier<W>(peers, self, rank, kPhaseStart, epoch);
  for (int64_t i = first; i < nvec; i += stride) {
    uint4 v[W];
    load_all_ranks<W>(peers, i, v);
    out[i] = sum_vectors<T, W>(v);
  }
  block_barrier<W>(peers, self, rank, kPhaseEnd, epoch);
  if (threadIdx.x == 0) self->counter[blockIdx.x] = epoch;
}

template <typename T, int W>
__global__ void __launch_bounds__(kArThreads)
    two_shot_kernel(ArPeers peers, ArSignal* self, uint4* mine, int rank, const uint4* in,
                    uint4* out, int64_t nvec, int64_t slice) {
  const uint32_t epoch = self->counter[blockIdx.x] + 1;
  const int64_t first = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  if (in != mine) {
    for (int64_t i = first; i < slice; i += stride) {
#pragma unroll
      for (int q = 0; q < W; ++q) {
        const int64_t idx = q * slice + i;
        if (idx < nvec) mine[idx] = in[idx];
      }
    }
  }
  block_barrier<W>(peers, self, rank, kPhaseStart, epoch);
  // reduce-scatter: this rank's slice, summed over every rank, written back in place
  for (int64_t i = first; i < slice; i += stride) {
    const int64_t idx = rank * slice + i;
    if (idx >= nvec) break;
    uint4 v[W];
    load_all_ranks<W>(peers, idx, v);
    mine[idx] = sum_vectors<T, W>(v);
  }
  block_barrier<W>(peers, self, rank, kPhaseMid, epoch);
  // all-gather: slice q from rank q
  for (int64_t i = first; i < slice; i += stride) {
    uint4 v[W];
#pragma unroll
    for (int q = 0; q < W; ++q) {
      const int64_t idx = q * slice + i;
      if (idx < nvec) v[q] = load_shared_vec(static_cast<const uint4*>(peers.staging[q]) + idx);
    }
#pragma unroll
    for (int q = 0; q < W; ++q) {
      const int64_t idx = q * slice + i;
      if (idx < nvec) out[idx] = v[q];
    }
  }
  block_barrier<W>(peers, self, rank, kPhaseEnd, epoch);
  if (threadIdx.x == 0) self->counter[blockIdx.x] = epoch;
}

int64_t two_shot_slice(int64_t nvec, int world_size) {
  const int64_t s = (nvec + world_size - 1) / world_size;
  return (s + kSliceAlignVecs - 1) / kSliceAlignVecs * kSliceAlignVecs;
}

template <typename T, int W>
void launch(int algo, int blocks, const ArPeers& peers, int rank, const void* in, void* out,
            int64_t nvec, cudaStream_t stream) {
  const uint4* in4 = static_cast<const uint4*>(in);
  uint4* out4 = static_cast<uint4*>(out);
  ArSignal* self = static_cast<ArSignal*>(peers.signal[rank]);
  uint4* mine = static_cast<uint4*>(peers.staging[rank]);
  if (algo == kArOneShot) {
    one_shot_kernel<T, W><<<blocks, kArThreads, 0, stream>>>(peers, self, mine, rank, in4, out4,
                                                             nvec);
  } else {
    two_shot_kernel<T, W><<<blocks, kArThreads, 0, stream>>>(peers, self, mine, rank, in4, out4,
                                                             nvec, two_shot_slice(nvec, W));
  }
}

template <typename T>
cudaError_t launch_world(int world_size, int algo, int blocks, const ArPeers& peers, int rank,
                         const void* in, void* out, int64_t nvec, cudaStream_t stream) {
  switch (world_size) {
    case 2: launch<T, 2>(algo, blocks, peers, rank, in, out, nvec, stream); break;
    case 4: launch<T, 4>(algo, blocks, peers, rank, in, out, nvec, stream); break;
    case 6: launch<T, 6>(algo, blocks, peers, rank, in, out, nvec, stream); break;
    case 8: launch<T, 8>(algo, blocks, peers, rank, in, out, nvec, stream); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace

int ar_choose_algo(int64_t bytes, int world_size) {
  // One-shot moves (W-1) x bytes into each GPU but has one barrier less; two-shot moves about
  // 2 x bytes. The crossovers are starting points, to be tuned on NVLink machines.
  const int64_t one_shot_max = world_size <= 2 ? (1 << 20) : world_size <= 4 ? (256 << 10)
                                                                              : (128 << 10);
  return bytes <= one_shot_max ? kArOneShot : kArTwoShot;
}

int ar_grid_blocks(int64_t bytes, int world_size, int algo, int max_blocks) {
  if (algo == kArAuto) algo = ar_choose_algo(bytes, world_size);
  const int64_t nvec = bytes / 16;
  const int64_t work = algo == kArOneShot ? nvec : two_shot_slice(nvec, world_size);
  int64_t blocks = (work + kArThreads - 1) / kArThreads;
  if (blocks > max_blocks) blocks = max_blocks;
  return blocks < 1 ? 1 : (int)blocks;
}

cudaError_t custom_all_reduce(void* out, const void* in, int64_t numel, int dtype,
                              const ArPeers& peers, int world_size, int rank,
                              int64_t staging_bytes, int algo, int max_blocks,
                              cudaStream_t stream) {
  if (world_size != 2 && world_size != 4 && world_size != 6 && world_size != 8)
    return cudaErrorInvalidValue;
  if (rank < 0 || rank >= world_size || numel < 0) return cudaErrorInvalidValue;
  if (max_blocks < 1 || max_blocks > kArMaxBlocks) return cudaErrorInvalidValue;
  if (algo != kArAuto && algo != kArOneShot && algo != kArTwoShot) return cudaErrorInvalidValue;
  int64_t esize;
  switch (dtype) {
    case kFloat32: esize = 4; break;
    case kFloat16:
    case kBFloat16: esize = 2; break;
    default: return cudaErrorInvalidValue;
  }
  const int64_t bytes = numel * esize;
  if (bytes % 16 != 0 || bytes > staging_bytes) return cudaErrorInvalidValue;
  for (int r = 0; r < world_size; ++r) {
    if (peers.signal[r] == nullptr || peers.staging[r] == nullptr || !aligned16(peers.staging[r]))
      return cudaErrorInvalidValue;
  }
  if (bytes == 0) return cudaSuccess;
  if (in == nullptr || out == nullptr || !aligned16(in) || !aligned16(out))
    return cudaErrorInvalidValue;
  // out must not overlap this rank's staging buffer: peers read it until the end barrier.
  const uintptr_t o = reinterpret_cast<uintptr_t>(out);
  const uintptr_t s = reinterpret_cast<uintptr_t>(peers.staging[rank]);
  if (o < s + (uintptr_t)staging_bytes && s < o + (uintptr_t)bytes) return cudaErrorInvalidValue;
  // in is either the staging buffer itself (no copy) or disjoint from it (copied in)
  const uintptr_t i = reinterpret_cast<uintptr_t>(in);
  if (i != s && i < s + (uintptr_t)staging_bytes && s < i + (uintptr_t)bytes)
    return cudaErrorInvalidValue;
  if (algo == kArAuto) algo = ar_choose_algo(bytes, world_size);
  const int blocks = ar_grid_blocks(bytes, world_size, algo, max_blocks);
  const int64_t nvec = bytes / 16;
  switch (dtype) {
    case kFloat32:
      return launch_world<float>(world_size, algo, blocks, peers, rank, in, out, nvec, stream);
    case kFloat16:
      return launch_world<half_t>(world_size, algo, blocks, peers, rank, in, out, nvec, stream);
    default:
      return launch_world<bf16_t>(world_size, algo, blocks, peers, rank, in, out, nvec, stream);
  }
}

// ---------------------------------------------------------------------------- IPC helpers
static_assert(sizeof(cudaIpcMemHandle_t) == kIpcHandleBytes, "IPC handle size");

cudaError_t ipc_malloc(int device, size_t bytes, void** ptr) {
  *ptr = nullptr;
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  e = cudaMalloc(ptr, bytes);
  if (e != cudaSuccess) return e;
  e = cudaMemset(*ptr, 0, bytes);
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
  if (e != cudaSuccess) {
    (void)cudaFree(*ptr);
    *ptr = nullptr;
  }
  return e;
}

cudaError_t ipc_free(void* ptr) { return cudaFree(ptr); }

cudaError_t ipc_get_handle(const void* ptr, unsigned char* handle) {
  cudaIpcMemHandle_t h;
  const cudaError_t e = cudaIpcGetMemHandle(&h, const_cast<void*>(ptr));
  if (e == cudaSuccess) memcpy(handle, &h, sizeof(h));
  return e;
}

cudaError_t ipc_open_handle(int device, const unsigned char* handle, void** ptr) {
  *ptr = nullptr;
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  cudaIpcMemHandle_t h;
  memcpy(&h, handle, sizeof(h));
  return cudaIpcOpenMemHandle(ptr, h, cudaIpcMemLazyEnablePeerAccess);
}

cudaError_t ipc_close_handle(void* ptr) { return cudaIpcCloseMemHandle(ptr); }

cudaError_t device_pci_bus_id(int device, char* buf, int len) {
  return cudaDeviceGetPCIBusId(buf, len, device);
}

cudaError_t device_by_pci_bus_id(const char* bus_id, int* device) {
  *device = -1;
  const cudaError_t e = cudaDeviceGetByPCIBusId(device, bus_id);
  if (e != cudaSuccess) {
    *device = -1;
    (void)cudaGetLastError();  // not visible here: an answer, not an error to keep
  }
  return cudaSuccess;
}

cudaError_t can_access_peer(int device, int peer, int* can) {
  *can = 0;
  if (device == peer) {
    *can = 1;  // the same GPU (e.g. two processes sharing one device)
    return cudaSuccess;
  }
  return cudaDeviceCanAccessPeer(can, device, peer);
}

}  // namespace llmcore
