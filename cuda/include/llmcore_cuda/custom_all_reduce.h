// Custom all-reduce (sum) for tensor parallelism on one host: each rank's GPU reads its peers'
// buffers directly through CUDA IPC + peer access, without NCCL. Small and medium messages
// (up to the staging size, 8 MiB by default) are faster this way than through NCCL's rings.
// The protocol (buffers, barriers, memory ordering, CUDA-graph replay) is described at the
// top of kernels/custom_all_reduce.cu.
#pragma once

#include <stddef.h>

#include "llmcore_cuda/common.h"

namespace llmcore {

constexpr int kArMaxRanks = 8;     // world sizes 2, 4, 6, 8
constexpr int kArMaxBlocks = 64;   // the largest grid a launch may use (max_blocks)
constexpr int kArThreads = 512;
constexpr int kArPhases = 3;       // start, mid (two-shot only), end
constexpr int kIpcHandleBytes = 64;

enum ArAlgo : int { kArAuto = 0, kArOneShot = 1, kArTwoShot = 2 };

// One rank's signal area. It must be zeroed once before any peer can see it, and never again.
struct ArSignal {
  // flags[phase][block][peer]: written by rank `peer` (a remote store) with the launch's epoch
  // when its block `block` has reached barrier `phase`.
  uint32_t flags[kArPhases][kArMaxBlocks][kArMaxRanks];
  // counter[block]: the epoch of the last launch block `block` of THIS rank completed; read and
  // advanced only by that block, on the device (so a replayed CUDA graph advances it too).
  uint32_t counter[kArMaxBlocks];
};

// Bytes reserved for an ArSignal (rounded up to 4 KiB; a staging buffer may follow it).
size_t ar_signal_bytes();
// Byte offset of ArSignal::counter (tests read the counters).
size_t ar_counter_offset();

// The pointers of every rank, rank order: signal[r] (an ArSignal) and staging[r] (a staging
// buffer of `staging_bytes`, 16-byte aligned). Own entries are local memory, the others are
// this process's mappings of the peers' buffers.
struct ArPeers {
  void* signal[kArMaxRanks];
  void* staging[kArMaxRanks];
};

// The algorithm kArAuto picks for a message of `bytes` over `world_size` ranks.
int ar_choose_algo(int64_t bytes, int world_size);
// Blocks a launch uses (every rank computes the same number for the same call).
int ar_grid_blocks(int64_t bytes, int world_size, int algo, int max_blocks);

// out = sum over the ranks of their `in` (numel elements of dtype float32/float16/bfloat16,
// numel * element size a multiple of 16 bytes and at most staging_bytes; in and out 16-byte
// aligned; out may equal in, but must not overlap this rank's staging buffer). `in` may start
// at this rank's staging buffer (the registered-buffer mode: no copy; the staging contents are
// clobbered), else it must not overlap it. Every rank must make the same sequence of calls
// (same sizes, dtypes, algo, max_blocks), all stream-ordered on one stream per rank, and the
// ranks' kernels must be able to run at the same time (the kernel waits for its peers).
cudaError_t custom_all_reduce(void* out, const void* in, int64_t numel, int dtype,
                              const ArPeers& peers, int world_size, int rank,
                              int64_t staging_bytes, int algo, int max_blocks,
                              cudaStream_t stream);

// ---- host helpers for the buffers (CUDA IPC). `device` is made current first.
// cudaMalloc `bytes` on `device`, zeroed, synchronised (ready to be shared).
cudaError_t ipc_malloc(int device, size_t bytes, void** ptr);
cudaError_t ipc_free(void* ptr);
// The IPC handle (kIpcHandleBytes bytes) of an allocation made by ipc_malloc.
cudaError_t ipc_get_handle(const void* ptr, unsigned char* handle);
// Maps a peer process's allocation on `device` (peer access enabled lazily).
cudaError_t ipc_open_handle(int device, const unsigned char* handle, void** ptr);
cudaError_t ipc_close_handle(void* ptr);
// PCI bus id of a device ("0000:3b:00.0"), the visible device of a bus id (-1: not visible),
// and whether `device` can read `peer`'s memory directly.
cudaError_t device_pci_bus_id(int device, char* buf, int len);
cudaError_t device_by_pci_bus_id(const char* bus_id, int* device);
cudaError_t can_access_peer(int device, int peer, int* can);

}  // namespace llmcore
