// HIP compatibility layer for the llmcore CUDA kernels: the cuda/ sources are compiled
// unchanged as HIP (hip/CMakeLists.txt); this header maps the CUDA runtime names, types and
// intrinsics they use to HIP. Included by cuda/include/llmcore_cuda/common.h when LLMCORE_HIP
// (or __HIP_PLATFORM_AMD__) is defined. Kernel-side differences handled in the sources:
//   * WARP_SIZE (64 on CDNA wavefronts, from __AMDGCN_WAVEFRONT_SIZE),
//   * shuffles go through llmcore::shfl_xor / shfl_up (no *_sync masks on HIP),
//   * fp8 conversions use exact software routines (no cuda_fp8.h),
//   * the mma.sync tensor-core prefill kernel is compiled out; prefill uses the SIMT path.
#pragma once

#ifndef __HIP_PLATFORM_AMD__
#define __HIP_PLATFORM_AMD__ 1
#endif
#include <hip/hip_runtime.h>
#include <hip/hip_fp16.h>

#if defined(__has_include)
#if __has_include(<hip/hip_bf16.h>)
#define LLMCORE_HIP_HAS_BF16_H 1
#endif
#endif

#if defined(LLMCORE_HIP_HAS_BF16_H)
#include <hip/hip_bf16.h>
typedef __hip_bfloat16 __nv_bfloat16;
#else
#include <hip/hip_bfloat16.h>
typedef hip_bfloat16 __nv_bfloat16;
#if defined(__HIPCC__)
__device__ __host__ inline float __bfloat162float(hip_bfloat16 v) { return static_cast<float>(v); }
__device__ __host__ inline hip_bfloat16 __float2bfloat16_rn(float v) { return hip_bfloat16(v); }
#endif
#endif
#if defined(LLMCORE_HIP_HAS_BF16_H) && defined(__HIPCC__) && !defined(__float2bfloat16_rn)
#define __float2bfloat16_rn __float2bfloat16
#endif

// Runtime API names.
#define cudaStream_t hipStream_t
#define cudaError_t hipError_t
#define cudaSuccess hipSuccess
#define cudaErrorInvalidValue hipErrorInvalidValue
#define cudaGetLastError hipGetLastError
#define cudaGetErrorString hipGetErrorString
#define cudaGetDevice hipGetDevice
#define cudaDeviceGetAttribute hipDeviceGetAttribute
#define cudaDevAttrComputeCapabilityMajor hipDeviceAttributeComputeCapabilityMajor
#define cudaFuncSetAttribute hipFuncSetAttribute
#define cudaDeviceProp hipDeviceProp_t
#define cudaGetDeviceProperties hipGetDeviceProperties
#define cudaHostGetDevicePointer hipHostGetDevicePointer
#define cudaHostAlloc hipHostMalloc
#define cudaHostAllocMapped hipHostMallocMapped
#define cudaFreeHost hipHostFree

// Memory, devices and IPC (the custom all-reduce's shared buffers).
#define cudaMalloc hipMalloc
#define cudaFree hipFree
#define cudaMemset hipMemset
#define cudaSetDevice hipSetDevice
#define cudaDeviceSynchronize hipDeviceSynchronize
#define cudaDeviceCanAccessPeer hipDeviceCanAccessPeer
#define cudaDeviceGetPCIBusId hipDeviceGetPCIBusId
#define cudaDeviceGetByPCIBusId hipDeviceGetByPCIBusId
#define cudaIpcMemHandle_t hipIpcMemHandle_t
#define cudaIpcGetMemHandle hipIpcGetMemHandle
#define cudaIpcOpenMemHandle hipIpcOpenMemHandle
#define cudaIpcCloseMemHandle hipIpcCloseMemHandle
#define cudaIpcMemLazyEnablePeerAccess hipIpcMemLazyEnablePeerAccess
