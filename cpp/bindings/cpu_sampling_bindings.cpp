#include <cstdint>

#include "bindings.h"
#include "llmcore/cpu_sampling.h"

namespace py = pybind11;

namespace llmcore {

// Thin wrapper over raw data pointers (tensor.data_ptr()); the caller checks dtypes and
// shapes (llmcore.sampling.sampler). The GIL is released while it runs.
void bind_cpu_sampling(py::module_& m) {
  m.def(
      "sample_inverse_cdf_f32",
      [](uintptr_t logits, int64_t logits_stride, uintptr_t rows, int num_rows, int vocab,
         uintptr_t u, uintptr_t out_tokens, uintptr_t out_lse, int num_threads) {
        py::gil_scoped_release release;
        sample_inverse_cdf_f32(reinterpret_cast<const float*>(logits), logits_stride,
                               reinterpret_cast<const int64_t*>(rows), num_rows, vocab,
                               reinterpret_cast<const float*>(u),
                               reinterpret_cast<int64_t*>(out_tokens),
                               reinterpret_cast<float*>(out_lse), num_threads);
      },
      py::arg("logits"), py::arg("logits_stride"), py::arg("rows"), py::arg("num_rows"),
      py::arg("vocab"), py::arg("u"), py::arg("out_tokens"), py::arg("out_lse"),
      py::arg("num_threads") = 0,
      "One inverse-CDF draw per row from softmax(logits) (fp32, CPU); see cpu_sampling.h.");
  m.def("sample_inverse_cdf_isa", &sample_inverse_cdf_isa);
}

}  // namespace llmcore
