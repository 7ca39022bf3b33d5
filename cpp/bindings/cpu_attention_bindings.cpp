#include <cstdint>

#include "bindings.h"
#include "llmcore/cpu_attention.h"

namespace py = pybind11;

namespace llmcore {

// Thin wrapper over raw data pointers (tensor.data_ptr()); the caller checks dtypes,
// contiguity and shapes. The GIL is released while the kernel runs.
void bind_cpu_attention(py::module_& m) {
  m.def(
      "paged_decode_attention_f32",
      [](uintptr_t q, int64_t q_stride, uintptr_t key_cache, uintptr_t value_cache,
         uintptr_t block_tables, uintptr_t seq_lens, int num_seqs, int num_heads,
         int num_kv_heads, int head_dim, int block_size, int max_blocks, float scale,
         int sliding_window, uintptr_t out, int64_t out_stride, int num_threads) {
        py::gil_scoped_release release;
        paged_decode_attention_f32(
            reinterpret_cast<const float*>(q), q_stride,
            reinterpret_cast<const float*>(key_cache),
            reinterpret_cast<const float*>(value_cache),
            reinterpret_cast<const int32_t*>(block_tables),
            reinterpret_cast<const int32_t*>(seq_lens), num_seqs, num_heads, num_kv_heads,
            head_dim, block_size, max_blocks, scale, sliding_window,
            reinterpret_cast<float*>(out), out_stride, num_threads);
      },
      py::arg("q"), py::arg("q_stride"), py::arg("key_cache"), py::arg("value_cache"),
      py::arg("block_tables"), py::arg("seq_lens"), py::arg("num_seqs"),
      py::arg("num_heads"), py::arg("num_kv_heads"), py::arg("head_dim"),
      py::arg("block_size"), py::arg("max_blocks"), py::arg("scale"),
      py::arg("sliding_window"), py::arg("out"), py::arg("out_stride"),
      py::arg("num_threads") = 0,
      "Paged decode attention (fp32, CPU) on raw data pointers; see cpu_attention.h.");
  m.def("paged_decode_attention_isa", &paged_decode_attention_isa);
}

}  // namespace llmcore
