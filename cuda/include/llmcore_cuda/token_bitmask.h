#pragma once
#include "llmcore_cuda/common.h"
namespace llmcore {
// Guided decoding on the device.
//
// apply_token_bitmask: logits[rows[i], t] = -inf for every token t whose bit is 0 in
// bitmask[i] (int32 words, bit t % 32 of word t / 32; words past `words` count as 0, so a
// padded vocabulary beyond the mask is disallowed). rows may be null (row i of the logits).
// logits: [*, vocab] with row stride `logits_stride`, dtype float32/float16/bfloat16.
cudaError_t apply_token_bitmask(void* logits, int64_t logits_stride, const int32_t* bitmask,
                                int words, const int64_t* rows, int num_rows, int vocab,
                                int dtype, cudaStream_t stream);

// wait_host_flag: a one-thread kernel that holds the stream until *flag (in page-locked
// host memory, read through its device mapping) reaches `target` (wrap-around safe: the
// host only counts up). Work queued after it on the stream waits for the host, not for
// the host's launch order: the engine queues a guided step's mask copy and sampling, then
// the next step's forward, and fills the mask while the device runs the forward. After
// `timeout_ms` it gives up and sets *timed_out (device memory, may be null) to 1, so a host
// that died mid-step cannot wedge the device forever.
cudaError_t wait_host_flag(const uint32_t* flag, uint32_t target, uint32_t timeout_ms,
                           uint32_t* timed_out, cudaStream_t stream);
// stream_wait_value_geq: the same hold as a stream memory operation (cuStreamWaitValue32,
// GEQ, wrap-around safe; hipStreamWaitValue32 on AMD): no kernel, no SM, no timeout.
// cudaErrorNotSupported where the driver does not offer it.
cudaError_t stream_wait_value_geq(const uint32_t* flag, uint32_t target, cudaStream_t stream);
// The device address of page-locked host memory (cudaHostGetDevicePointer).
cudaError_t host_device_pointer(void** device_ptr, void* host_ptr);
// A page-locked, device-mapped host allocation of its own (cudaHostAlloc, mapped) and its
// device address: for a flag the device polls, whose address must be exactly this buffer.
cudaError_t host_alloc_mapped(void** host_ptr, void** device_ptr, size_t bytes);
cudaError_t host_free(void* host_ptr);
}  // namespace llmcore
