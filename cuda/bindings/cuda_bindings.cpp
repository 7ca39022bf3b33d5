// llmcore._cuda (and llmcore._hip): thin pybind11 bindings of the kernel launchers.
// Every tensor is passed as an integer device pointer (tensor.data_ptr(), 0 = null) and the
// stream as an integer (torch.cuda.current_stream().cuda_stream). No torch headers here.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "llmcore_cuda/activation.h"
#include "llmcore_cuda/attention.h"
#include "llmcore_cuda/cache.h"
#include "llmcore_cuda/custom_all_reduce.h"
#include "llmcore_cuda/norm.h"
#include "llmcore_cuda/rotary.h"
#include "llmcore_cuda/sampling.h"
#include "llmcore_cuda/token_bitmask.h"

namespace py = pybind11;
using ptr_t = uintptr_t;

namespace {
template <typename P> P* P_(ptr_t p) { return reinterpret_cast<P*>(p); }
cudaStream_t S_(ptr_t s) { return reinterpret_cast<cudaStream_t>(s); }
void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("llmcore.") + what + ": " + cudaGetErrorString(e));
}
}  // namespace

#ifndef LLMCORE_MODULE_NAME
#define LLMCORE_MODULE_NAME _cuda
#endif

PYBIND11_MODULE(LLMCORE_MODULE_NAME, m) {
  m.doc() = "llmcore GPU kernels (raw-pointer launchers)";
  m.attr("DTYPE_FLOAT32") = (int)llmcore::kFloat32;
  m.attr("DTYPE_FLOAT16") = (int)llmcore::kFloat16;
  m.attr("DTYPE_BFLOAT16") = (int)llmcore::kBFloat16;
  m.attr("DTYPE_FP8_E4M3") = (int)llmcore::kFp8E4M3;
  m.attr("DTYPE_FP8_E5M2") = (int)llmcore::kFp8E5M2;

  m.def("reshape_and_cache",
        [](ptr_t key, ptr_t value, ptr_t key_cache, ptr_t value_cache, ptr_t slot_mapping,
           int num_tokens, int num_kv_heads, int head_dim, int block_size, int64_t key_stride,
           int64_t value_stride, int dtype, int cache_dtype, ptr_t k_scale, ptr_t v_scale,
           ptr_t stream) {
          check(llmcore::reshape_and_cache(P_<const void>(key), P_<const void>(value),
                                           P_<void>(key_cache), P_<void>(value_cache),
                                           P_<const int64_t>(slot_mapping), num_tokens,
                                           num_kv_heads, head_dim, block_size, key_stride,
                                           value_stride, dtype, cache_dtype,
                                           P_<const float>(k_scale), P_<const float>(v_scale),
                                           S_(stream)),
                "reshape_and_cache");
        });

  m.def("paged_attention",
        [](ptr_t out, int64_t out_stride, ptr_t q, int64_t q_stride, ptr_t key_cache,
           ptr_t value_cache, ptr_t block_tables, int max_blocks_per_seq, ptr_t seq_lens,
           ptr_t query_start_loc, int num_rows, int num_seqs, int num_heads, int num_kv_heads,
           int head_dim, int block_size, float scale, int sliding_window, int dtype,
           int cache_dtype, ptr_t k_scale, ptr_t v_scale, int num_splits, int partition_size,
           ptr_t tmp_out, ptr_t tmp_ml, int use_tensor_cores, ptr_t stream) {
          check(llmcore::paged_attention(
                    P_<void>(out), out_stride, P_<const void>(q), q_stride,
                    P_<const void>(key_cache), P_<const void>(value_cache),
                    P_<const int>(block_tables), max_blocks_per_seq, P_<const int>(seq_lens),
                    P_<const int>(query_start_loc), num_rows, num_seqs, num_heads, num_kv_heads,
                    head_dim, block_size, scale, sliding_window, dtype, cache_dtype,
                    P_<const float>(k_scale), P_<const float>(v_scale), num_splits,
                    partition_size, P_<float>(tmp_out), P_<float>(tmp_ml), use_tensor_cores,
                    S_(stream)),
                "paged_attention");
        });

  m.def("prefill_attention",
        [](ptr_t out, int64_t out_stride, ptr_t q, int64_t q_stride, ptr_t key_cache,
           ptr_t value_cache, ptr_t block_tables, int max_blocks_per_seq, ptr_t seq_lens,
           ptr_t query_start_loc, int num_tokens, int num_seqs, int max_query_len, int num_heads,
           int num_kv_heads, int head_dim, int block_size, float scale, int sliding_window,
           int dtype, int cache_dtype, ptr_t k_scale, ptr_t v_scale, int use_tensor_cores,
           ptr_t stream) {
          check(llmcore::prefill_attention(
                    P_<void>(out), out_stride, P_<const void>(q), q_stride,
                    P_<const void>(key_cache), P_<const void>(value_cache),
                    P_<const int>(block_tables), max_blocks_per_seq, P_<const int>(seq_lens),
                    P_<const int>(query_start_loc), num_tokens, num_seqs, max_query_len,
                    num_heads, num_kv_heads, head_dim, block_size, scale, sliding_window, dtype,
                    cache_dtype, P_<const float>(k_scale), P_<const float>(v_scale),
                    use_tensor_cores, S_(stream)),
                "prefill_attention");
        });

  m.def("rms_norm", [](ptr_t out, int64_t out_stride, ptr_t x, int64_t x_stride, ptr_t weight,
                       float eps, int num_tokens, int hidden, int dtype, ptr_t stream) {
    check(llmcore::rms_norm(P_<void>(out), out_stride, P_<const void>(x), x_stride,
                            P_<const void>(weight), eps, num_tokens, hidden, dtype, S_(stream)),
          "rms_norm");
  });

  m.def("fused_add_rms_norm",
        [](ptr_t x, int64_t x_stride, ptr_t residual, int64_t residual_stride, ptr_t weight,
           float eps, int num_tokens, int hidden, int dtype, ptr_t stream) {
          check(llmcore::fused_add_rms_norm(P_<void>(x), x_stride, P_<void>(residual),
                                            residual_stride, P_<const void>(weight), eps,
                                            num_tokens, hidden, dtype, S_(stream)),
                "fused_add_rms_norm");
        });

  m.def("rotary_embedding",
        [](ptr_t positions, ptr_t query, int64_t query_stride, ptr_t key, int64_t key_stride,
           ptr_t cos_sin_cache, int num_tokens, int num_heads, int num_kv_heads, int head_dim,
           int rot_dim, int is_neox, int dtype, ptr_t stream) {
          check(llmcore::rotary_embedding(P_<const int64_t>(positions), P_<void>(query),
                                          query_stride, P_<void>(key), key_stride,
                                          P_<const float>(cos_sin_cache), num_tokens, num_heads,
                                          num_kv_heads, head_dim, rot_dim, is_neox, dtype,
                                          S_(stream)),
                "rotary_embedding");
        });

  m.def("silu_and_mul", [](ptr_t out, int64_t out_stride, ptr_t x, int64_t x_stride,
                           int num_tokens, int d, int dtype, ptr_t stream) {
    check(llmcore::silu_and_mul(P_<void>(out), out_stride, P_<const void>(x), x_stride,
                                num_tokens, d, dtype, S_(stream)),
          "silu_and_mul");
  });

  m.def("apply_token_bitmask", [](ptr_t logits, int64_t logits_stride, ptr_t bitmask, int words,
                                  ptr_t rows, int num_rows, int vocab, int dtype, ptr_t stream) {
    check(llmcore::apply_token_bitmask(P_<void>(logits), logits_stride, P_<const int32_t>(bitmask),
                                       words, P_<const int64_t>(rows), num_rows, vocab, dtype,
                                       S_(stream)),
          "apply_token_bitmask");
  });

  m.def("wait_host_flag", [](ptr_t flag, uint32_t target, uint32_t timeout_ms, ptr_t timed_out,
                             ptr_t stream) {
    check(llmcore::wait_host_flag(P_<const uint32_t>(flag), target, timeout_ms,
                                  P_<uint32_t>(timed_out), S_(stream)),
          "wait_host_flag");
  });

  m.def("stream_wait_value_geq", [](ptr_t flag, uint32_t target, ptr_t stream) {
    return llmcore::stream_wait_value_geq(P_<const uint32_t>(flag), target, S_(stream)) ==
           cudaSuccess;   // False: not offered by this driver (nothing was queued)
  });
  m.def("host_alloc_mapped", [](size_t bytes) {
    void *host = nullptr, *dev = nullptr;
    check(llmcore::host_alloc_mapped(&host, &dev, bytes), "host_alloc_mapped");
    return py::make_tuple(reinterpret_cast<ptr_t>(host), reinterpret_cast<ptr_t>(dev));
  });
  m.def("host_free", [](ptr_t host_ptr) { check(llmcore::host_free(P_<void>(host_ptr)), "host_free"); });

  m.def("host_device_pointer", [](ptr_t host_ptr) {
    void* dev = nullptr;
    check(llmcore::host_device_pointer(&dev, P_<void>(host_ptr)), "host_device_pointer");
    return reinterpret_cast<ptr_t>(dev);
  });

  m.def("argmax", [](ptr_t out, ptr_t logits, int64_t logits_stride, int batch, int vocab,
                     int dtype, ptr_t stream) {
    check(llmcore::argmax(P_<int64_t>(out), P_<const void>(logits), logits_stride, batch, vocab,
                          dtype, S_(stream)),
          "argmax");
  });

  m.def("sample",
        [](ptr_t out, ptr_t logits, int64_t logits_stride, int batch, int vocab, int dtype,
           ptr_t temperature, ptr_t top_k, ptr_t top_p, ptr_t min_p, ptr_t uniform,
           uint64_t seed, uint64_t offset, ptr_t stream) {
          check(llmcore::sample(P_<int64_t>(out), P_<const void>(logits), logits_stride, batch,
                                vocab, dtype, P_<const float>(temperature), P_<const int>(top_k),
                                P_<const float>(top_p), P_<const float>(min_p),
                                P_<const float>(uniform), seed, offset, S_(stream)),
                "sample");
        });

  // ---- custom all-reduce (llmcore.ops.custom_all_reduce) and its IPC buffers
  m.attr("AR_MAX_RANKS") = llmcore::kArMaxRanks;
  m.attr("AR_MAX_BLOCKS") = llmcore::kArMaxBlocks;
  m.attr("AR_THREADS") = llmcore::kArThreads;
  m.attr("AR_AUTO") = (int)llmcore::kArAuto;
  m.attr("AR_ONE_SHOT") = (int)llmcore::kArOneShot;
  m.attr("AR_TWO_SHOT") = (int)llmcore::kArTwoShot;
  m.attr("AR_SIGNAL_BYTES") = (int64_t)llmcore::ar_signal_bytes();
  m.attr("AR_COUNTER_OFFSET") = (int64_t)llmcore::ar_counter_offset();
  m.attr("IPC_HANDLE_BYTES") = llmcore::kIpcHandleBytes;

  m.def("ar_choose_algo", &llmcore::ar_choose_algo);
  m.def("ar_grid_blocks", &llmcore::ar_grid_blocks);

  m.def("custom_all_reduce",
        [](ptr_t out, ptr_t in, int64_t numel, int dtype, const std::vector<ptr_t>& signals,
           const std::vector<ptr_t>& staging, int rank, int64_t staging_bytes, int algo,
           int max_blocks, ptr_t stream) {
          if (signals.empty() || signals.size() != staging.size() ||
              signals.size() > (size_t)llmcore::kArMaxRanks)
            throw std::invalid_argument("custom_all_reduce: one signal and one staging pointer "
                                        "per rank, at most 8 ranks");
          llmcore::ArPeers peers{};
          for (size_t r = 0; r < signals.size(); ++r) {
            peers.signal[r] = P_<void>(signals[r]);
            peers.staging[r] = P_<void>(staging[r]);
          }
          check(llmcore::custom_all_reduce(P_<void>(out), P_<const void>(in), numel, dtype, peers,
                                           (int)signals.size(), rank, staging_bytes, algo,
                                           max_blocks, S_(stream)),
                "custom_all_reduce");
        });

  m.def("ipc_malloc", [](int device, size_t bytes) {
    void* p = nullptr;
    check(llmcore::ipc_malloc(device, bytes, &p), "ipc_malloc");
    return reinterpret_cast<ptr_t>(p);
  });
  m.def("ipc_free", [](ptr_t p) { check(llmcore::ipc_free(P_<void>(p)), "ipc_free"); });
  m.def("ipc_get_handle", [](ptr_t p) {
    unsigned char h[llmcore::kIpcHandleBytes];
    check(llmcore::ipc_get_handle(P_<const void>(p), h), "ipc_get_handle");
    return py::bytes(reinterpret_cast<const char*>(h), sizeof(h));
  });
  m.def("ipc_open_handle", [](int device, const py::bytes& handle) {
    const std::string h = handle;
    if (h.size() != (size_t)llmcore::kIpcHandleBytes)
      throw std::invalid_argument("ipc_open_handle: an IPC handle has 64 bytes");
    void* p = nullptr;
    check(llmcore::ipc_open_handle(device, reinterpret_cast<const unsigned char*>(h.data()), &p),
          "ipc_open_handle");
    return reinterpret_cast<ptr_t>(p);
  });
  m.def("ipc_close_handle",
        [](ptr_t p) { check(llmcore::ipc_close_handle(P_<void>(p)), "ipc_close_handle"); });
  m.def("device_pci_bus_id", [](int device) {
    char buf[64] = {0};
    check(llmcore::device_pci_bus_id(device, buf, (int)sizeof(buf) - 1), "device_pci_bus_id");
    return std::string(buf);
  });
  m.def("device_by_pci_bus_id", [](const std::string& bus_id) {
    int device = -1;
    check(llmcore::device_by_pci_bus_id(bus_id.c_str(), &device), "device_by_pci_bus_id");
    return device;
  });
  m.def("can_access_peer", [](int device, int peer) {
    int can = 0;
    check(llmcore::can_access_peer(device, peer, &can), "can_access_peer");
    return can != 0;
  });
}
