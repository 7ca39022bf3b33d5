// Tensor-core helpers shared by the attention kernels: mma.sync.m16n8k16 (f32 accumulate) for
// fp16/bf16 operands, fp32 -> operand packing, fp8 -> f16 pair conversion and the device check.
// CUDA only (sm_80+ at run time; the bodies compile to nothing for older targets).
#pragma once

#include "llmcore_cuda/common.h"

#if !(defined(LLMCORE_HIP) || defined(__HIP_PLATFORM_AMD__))
namespace llmcore {

// Whether the current device runs mma.sync.m16n8k16 with bf16 (compute capability 8.0+); the
// attention launchers ask before choosing their tensor-core kernels.
inline bool current_device_has_mma() {
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess)
    return false;
  return major >= 8;
}

template <typename T> struct MmaOp;
template <> struct MmaOp<half_t> {
  // c (16x8, f32) += a (16x16, row) * b (16x8, col); fragment layouts as in the PTX ISA.
  static __device__ __forceinline__ void run(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};
template <> struct MmaOp<bf16_t> {
  static __device__ __forceinline__ void run(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};

#if defined(__CUDACC__)
// Four fp8 values (bytes 0..3 of w) -> two f16x2 words: lo = (b0, b1), hi = (b2, b3). Exact
// (every e4m3 / e5m2 value is an fp16 value); one cvt per pair on sm_89+.
template <int KIND>
__device__ __forceinline__ void fp8x4_to_half2x2(uint32_t w, uint32_t& lo, uint32_t& hi) {
  constexpr __nv_fp8_interpretation_t kInterp = KIND == kFp8E4M3 ? __NV_E4M3 : __NV_E5M2;
  const __half2_raw a = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(w & 0xffffu), kInterp);
  const __half2_raw b = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(w >> 16), kInterp);
  lo = (uint32_t)a.x | ((uint32_t)a.y << 16);
  hi = (uint32_t)b.x | ((uint32_t)b.y << 16);
}
#endif

}  // namespace llmcore
#endif  // !HIP
