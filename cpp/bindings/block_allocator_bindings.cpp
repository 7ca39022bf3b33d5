#include <pybind11/stl.h>

#include "bindings.h"
#include "llmcore/block_allocator.h"

namespace py = pybind11;

namespace llmcore {

void bind_block_allocator(py::module_& m) {
  py::class_<BlockAllocator>(m, "BlockAllocator")
      .def(py::init<int, int, int, bool>(), py::arg("block_size"),
           py::arg("num_device_blocks"), py::arg("num_cpu_blocks") = 0,
           py::arg("enable_prefix_caching") = false)
      .def_property_readonly("block_size", &BlockAllocator::block_size)
      .def("num_device_blocks", &BlockAllocator::num_device_blocks)
      .def("num_cpu_blocks", &BlockAllocator::num_cpu_blocks)
      .def("num_free_blocks", &BlockAllocator::num_free_blocks)
      .def("num_free_cpu_blocks", &BlockAllocator::num_free_cpu_blocks)
      .def("num_evictable_blocks", &BlockAllocator::num_evictable_blocks)
      .def("can_allocate", &BlockAllocator::can_allocate, py::arg("num_blocks"),
           py::arg("watermark_blocks") = 0)
      .def("usage", &BlockAllocator::usage)
      .def("cpu_usage", &BlockAllocator::cpu_usage)
      .def("allocate", &BlockAllocator::allocate)
      .def("incref", &BlockAllocator::incref)
      .def("decref", &BlockAllocator::decref)
      .def("ref_count", &BlockAllocator::ref_count)
      .def("allocate_cpu", &BlockAllocator::allocate_cpu)
      .def("decref_cpu", &BlockAllocator::decref_cpu)
      .def("is_cached", &BlockAllocator::is_cached)
      .def("hit_rate", &BlockAllocator::hit_rate)
      .def("check_invariants", &BlockAllocator::check_invariants);
}

}  // namespace llmcore
