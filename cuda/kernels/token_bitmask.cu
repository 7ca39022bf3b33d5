// Guided decoding on the device: the token-bitmask fill of the logits and the stream-ordered
// wait for the host's mask (see llmcore_cuda/token_bitmask.h).
#include "llmcore_cuda/token_bitmask.h"

#if !defined(__HIP_PLATFORM_AMD__)
#include <cuda.h>  // the driver API's types only: its function is looked up at run time
#endif

namespace llmcore {
namespace {

template <typename T> __device__ inline T neg_inf();
template <> __device__ inline float neg_inf<float>() { return -INFINITY; }
template <> __device__ inline __half neg_inf<__half>() { return __float2half(-INFINITY); }
template <> __device__ inline __nv_bfloat16 neg_inf<__nv_bfloat16>() {
  return __float2bfloat16_rn(-INFINITY);
}

// One thread per 32-token word; grid.y = row. An all-ones word (most words inside a JSON
// string) costs one load; a zero word writes its 32 logits.
template <typename T>
__global__ void apply_token_bitmask_kernel(T* __restrict__ logits, int64_t stride,
                                           const int32_t* __restrict__ bitmask, int words,
                                           const int64_t* __restrict__ rows, int vocab) {
  const int i = blockIdx.y;
  const int w = blockIdx.x * blockDim.x + threadIdx.x;
  const int needed = (vocab + 31) / 32;
  if (w >= needed) return;
  const uint32_t bits = w < words ? static_cast<uint32_t>(bitmask[(int64_t)i * words + w]) : 0u;
  if (bits == 0xffffffffu) return;
  const int64_t r = rows != nullptr ? rows[i] : i;
  T* p = logits + r * stride + (int64_t)w * 32;
  const int n = min(32, vocab - w * 32);
  for (int b = 0; b < n; ++b)
    if (!((bits >> b) & 1u)) p[b] = neg_inf<T>();
}

__device__ inline uint32_t load_volatile(const uint32_t* p) {
  return *reinterpret_cast<const volatile uint32_t*>(p);
}

// Cycles of this SM's clock, monotonic within the one-thread kernel. The timeout is a
// guard against a host that never publishes, not a measurement: it counts cycles at an
// assumed 2 GHz (a slower clock only makes the guard longer).
__device__ inline unsigned long long now_cycles() {
  return static_cast<unsigned long long>(clock64());
}

__global__ void wait_host_flag_kernel(const uint32_t* flag, uint32_t target,
                                      unsigned long long timeout_cycles, uint32_t* timed_out) {
  const unsigned long long start = now_cycles();
  // (int32)(flag - target) < 0: the host's counter has not reached target yet, across wrap
  // timed_out reports this wait only: the flag of every wait is written (0 or 1), in stream
  // order, so a step's copy of it is never a stale 1 from an earlier one
  while (static_cast<int32_t>(load_volatile(flag) - target) < 0) {
    if (now_cycles() - start > timeout_cycles) {
      if (timed_out != nullptr) *timed_out = 1u;
      return;
    }
#if defined(__HIP_PLATFORM_AMD__)
    __builtin_amdgcn_s_sleep(8);
#elif __CUDA_ARCH__ >= 700
    __nanosleep(500);
#endif
  }
  if (timed_out != nullptr) *timed_out = 0u;
}

}  // namespace

cudaError_t apply_token_bitmask(void* logits, int64_t logits_stride, const int32_t* bitmask,
                                int words, const int64_t* rows, int num_rows, int vocab,
                                int dtype, cudaStream_t stream) {
  if (num_rows <= 0 || vocab <= 0) return cudaSuccess;
  if (logits == nullptr || bitmask == nullptr || words <= 0) return cudaErrorInvalidValue;
  const int threads = 128;
  const dim3 grid(((vocab + 31) / 32 + threads - 1) / threads, num_rows);
  switch (dtype) {
    case kFloat32:
      apply_token_bitmask_kernel<float><<<grid, threads, 0, stream>>>(
          static_cast<float*>(logits), logits_stride, bitmask, words, rows, vocab);
      break;
    case kFloat16:
      apply_token_bitmask_kernel<__half><<<grid, threads, 0, stream>>>(
          static_cast<__half*>(logits), logits_stride, bitmask, words, rows, vocab);
      break;
    case kBFloat16:
      apply_token_bitmask_kernel<__nv_bfloat16><<<grid, threads, 0, stream>>>(
          static_cast<__nv_bfloat16*>(logits), logits_stride, bitmask, words, rows, vocab);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t wait_host_flag(const uint32_t* flag, uint32_t target, uint32_t timeout_ms,
                           uint32_t* timed_out, cudaStream_t stream) {
  if (flag == nullptr) return cudaErrorInvalidValue;
  wait_host_flag_kernel<<<1, 1, 0, stream>>>(
      flag, target, static_cast<unsigned long long>(timeout_ms) * 2000000ull, timed_out);
  return cudaGetLastError();
}

cudaError_t stream_wait_value_geq(const uint32_t* flag, uint32_t target, cudaStream_t stream) {
#if defined(__HIP_PLATFORM_AMD__)
  return hipStreamWaitValue32(stream, const_cast<uint32_t*>(flag), target, hipStreamWaitValueGte,
                              0xFFFFFFFFu);
#else
  // the driver's stream memory operation, reached through the runtime (no libcuda link)
  using Fn = CUresult (*)(CUstream, CUdeviceptr, cuuint32_t, unsigned int);
  static const Fn fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuStreamWaitValue32", &p, 12000, cudaEnableDefault,
                                         &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      return static_cast<Fn>(nullptr);
    return reinterpret_cast<Fn>(p);
  }();
  if (fn == nullptr) return cudaErrorNotSupported;
  const CUresult r = fn(reinterpret_cast<CUstream>(stream), reinterpret_cast<CUdeviceptr>(flag),
                        target, CU_STREAM_WAIT_VALUE_GEQ);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorNotSupported;
#endif
}

cudaError_t host_device_pointer(void** device_ptr, void* host_ptr) {
  return cudaHostGetDevicePointer(device_ptr, host_ptr, 0);
}

cudaError_t host_alloc_mapped(void** host_ptr, void** device_ptr, size_t bytes) {
  cudaError_t e = cudaHostAlloc(host_ptr, bytes, cudaHostAllocMapped);
  if (e != cudaSuccess) return e;
  e = cudaHostGetDevicePointer(device_ptr, *host_ptr, 0);
  if (e != cudaSuccess) cudaFreeHost(*host_ptr);
  return e;
}

cudaError_t host_free(void* host_ptr) { return cudaFreeHost(host_ptr); }

}  // namespace llmcore
