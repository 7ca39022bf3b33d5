#include <cstdint>

#include "bindings.h"
#include "llmcore/cpu_token_bitmask.h"

namespace py = pybind11;

namespace llmcore {

// Thin wrapper over raw data pointers (tensor.data_ptr()); the caller checks dtypes and
// shapes (llmcore.structured_output.bitmask). The GIL is released while it runs.
void bind_cpu_token_bitmask(py::module_& m) {
  m.def(
      "apply_token_bitmask_f32",
      [](uintptr_t logits, int64_t logits_stride, uintptr_t bitmask, int words, uintptr_t rows,
         int num_rows, int vocab, int num_threads) {
        py::gil_scoped_release release;
        apply_token_bitmask_f32(reinterpret_cast<float*>(logits), logits_stride,
                                reinterpret_cast<const int32_t*>(bitmask), words,
                                reinterpret_cast<const int64_t*>(rows), num_rows, vocab,
                                num_threads);
      },
      py::arg("logits"), py::arg("logits_stride"), py::arg("bitmask"), py::arg("words"),
      py::arg("rows"), py::arg("num_rows"), py::arg("vocab"), py::arg("num_threads") = 0,
      "Disallowed tokens' logits -> -inf (fp32, CPU); see cpu_token_bitmask.h.");
}

}  // namespace llmcore
