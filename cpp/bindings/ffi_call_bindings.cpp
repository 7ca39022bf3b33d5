#include <cstdint>
#include <memory>
#include <vector>

#include "bindings.h"
#include "llmcore/ffi_call.h"

namespace py = pybind11;

namespace llmcore {

namespace {

// A tvm-ffi object from Python (tvm_ffi.Object, Function, Tensor, Array, ...): its address.
void* object_handle(const py::handle& obj) {
  return reinterpret_cast<void*>(obj.attr("__chandle__")().cast<uintptr_t>());
}

FfiAny to_arg(const py::handle& item) {
  if (item.is_none()) return FfiAny{};
  if (py::isinstance<py::bool_>(item)) return ffi_bool_arg(item.cast<bool>());
  if (py::isinstance<py::int_>(item)) return ffi_int_arg(item.cast<int64_t>());
  if (py::hasattr(item, "__chandle__")) return ffi_object_arg(object_handle(item));
  throw py::type_error("FfiCallThread.start: an argument is not None, bool, int or a tvm-ffi object");
}

}  // namespace

void bind_ffi_call(py::module_& m) {
  py::class_<FfiCallThread>(m, "FfiCallThread",
                            "One native thread calling tvm-ffi functions without the GIL "
                            "(see ffi_call.h). Keep the function and its object arguments "
                            "alive until wait() returns.")
      .def(py::init([](const std::string& library_path) {
             return std::make_unique<FfiCallThread>(load_ffi_api(library_path));
           }),
           py::arg("library_path"))
      .def(
          "start",
          [](FfiCallThread& t, const py::list& calls) {
            std::vector<FfiCall> job;
            job.reserve(calls.size());
            for (const auto& item : calls) {
              auto pair = item.cast<py::tuple>();
              if (pair.size() != 2) {
                throw py::type_error("FfiCallThread.start: each call is (function, [args])");
              }
              FfiCall c;
              c.func = object_handle(pair[0]);
              auto args = pair[1].cast<py::list>();
              c.args.reserve(args.size());
              for (const auto& a : args) c.args.push_back(to_arg(a));
              job.push_back(std::move(c));
            }
            t.start(std::move(job));
          },
          py::arg("calls"), "Start [(function, [args]), ...]: called in order on the thread.")
      .def("wait",
           [](FfiCallThread& t) {
             std::string err;
             {
               py::gil_scoped_release release;
               err = t.wait();
             }
             return err;
           },
           "Wait for the started call: '' on success, else its error.")
      .def_property_readonly("pending", &FfiCallThread::pending);
}

}  // namespace llmcore
