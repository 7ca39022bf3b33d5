#pragma once

#include <pybind11/pybind11.h>

namespace llmcore {
void bind_block_allocator(pybind11::module_& m);
void bind_scheduler(pybind11::module_& m);
void bind_cpu_attention(pybind11::module_& m);
void bind_cpu_token_bitmask(pybind11::module_& m);
void bind_cpu_sampling(pybind11::module_& m);
void bind_ffi_call(pybind11::module_& m);
}  // namespace llmcore
