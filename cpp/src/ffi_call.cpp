#include "llmcore/ffi_call.h"

#include <dlfcn.h>

#include <cstring>
#include <stdexcept>
#include <utility>

namespace llmcore {

namespace {

// TVMFFIObject's header: the ref count, then the type index.
struct FfiObjectHeader {
  uint64_t combined_ref_count;
  int32_t type_index;
  uint32_t padding;
  void* deleter;
};

struct FfiByteArray {
  const char* data;
  size_t size;
};

// TVMFFIErrorCell, right after an error object's header: kind, message, backtrace, ...
struct FfiErrorCell {
  FfiByteArray kind;
  FfiByteArray message;
};

template <typename F>
F symbol(void* lib, const char* name, const std::string& path) {
  void* p = dlsym(lib, name);
  if (p == nullptr) {
    throw std::runtime_error(path + " has no symbol " + name);
  }
  F f;
  std::memcpy(&f, &p, sizeof(f));
  return f;
}

}  // namespace

FfiApi load_ffi_api(const std::string& library_path) {
  // RTLD_NOLOAD: only a library the process has loaded already (tvm_ffi's own)
  void* lib = dlopen(library_path.c_str(), RTLD_NOW | RTLD_NOLOAD);
  if (lib == nullptr) {
    const char* err = dlerror();
    throw std::runtime_error("tvm-ffi library " + library_path + " is not loaded" +
                             (err ? std::string(": ") + err : std::string()));
  }
  FfiApi api;
  api.function_call = symbol<decltype(api.function_call)>(lib, "TVMFFIFunctionCall", library_path);
  api.error_move_from_raised =
      symbol<decltype(api.error_move_from_raised)>(lib, "TVMFFIErrorMoveFromRaised", library_path);
  api.object_dec_ref = symbol<decltype(api.object_dec_ref)>(lib, "TVMFFIObjectDecRef", library_path);
  // the library stays loaded by its owner: this handle's reference is dropped
  dlclose(lib);
  return api;
}

FfiAny ffi_object_arg(void* object) {
  FfiAny a;
  if (object == nullptr) return a;
  a.type_index = static_cast<const FfiObjectHeader*>(object)->type_index;
  a.value = reinterpret_cast<uintptr_t>(object);
  return a;
}

FfiAny ffi_int_arg(int64_t v) {
  FfiAny a;
  a.type_index = kFfiInt;
  std::memcpy(&a.value, &v, sizeof(v));
  return a;
}

FfiAny ffi_bool_arg(bool v) {
  FfiAny a;
  a.type_index = kFfiBool;
  a.value = v ? 1 : 0;
  return a;
}

FfiCallThread::FfiCallThread(FfiApi api) : api_(api) {
  if (!api_.function_call || !api_.error_move_from_raised || !api_.object_dec_ref) {
    throw std::invalid_argument("FfiCallThread: an FfiApi function is missing");
  }
  thread_ = std::thread([this] { run(); });
}

FfiCallThread::~FfiCallThread() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();   // a running call ends first: its arguments are still alive
}

void FfiCallThread::start(std::vector<FfiCall> calls) {
  for (const auto& c : calls) {
    if (c.func == nullptr) throw std::invalid_argument("FfiCallThread::start: null function");
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!waited_) throw std::logic_error("FfiCallThread::start: the last job was not waited for");
    calls_ = std::move(calls);
    has_job_ = true;
    done_ = false;
    waited_ = false;
    error_.clear();
  }
  cv_.notify_all();
}

std::string FfiCallThread::wait() {
  std::unique_lock<std::mutex> lock(mu_);
  if (waited_) throw std::logic_error("FfiCallThread::wait: no call was started");
  cv_.wait(lock, [this] { return done_; });
  waited_ = true;
  return std::move(error_);
}

bool FfiCallThread::pending() const {
  std::lock_guard<std::mutex> lock(mu_);
  return !waited_;
}

std::string FfiCallThread::call(FfiCall& c) {
  FfiAny result;
  int rc = api_.function_call(c.func, c.args.data(), static_cast<int32_t>(c.args.size()), &result);
  if (rc == 0) {
    if (result.type_index >= kFfiStaticObjectBegin && result.value != 0) {
      api_.object_dec_ref(reinterpret_cast<void*>(static_cast<uintptr_t>(result.value)));
    }
    return {};
  }
  // the error is in this thread's TLS: take it (and its reference) here
  void* err = nullptr;
  api_.error_move_from_raised(&err);
  if (err == nullptr) return "tvm-ffi call failed with code " + std::to_string(rc);
  const auto* cell = reinterpret_cast<const FfiErrorCell*>(static_cast<const char*>(err) +
                                                           sizeof(FfiObjectHeader));
  std::string error(cell->kind.data, cell->kind.size);
  error += ": ";
  error.append(cell->message.data, cell->message.size);
  api_.object_dec_ref(err);
  return error;
}

void FfiCallThread::run() {
  for (;;) {
    std::vector<FfiCall> calls;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return has_job_ || stop_; });
      if (!has_job_) return;   // stop_ with nothing queued
      calls = std::move(calls_);
      has_job_ = false;
    }
    std::string error;
    for (auto& c : calls) {
      error = call(c);
      if (!error.empty()) break;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      error_ = std::move(error);
      done_ = true;
    }
    cv_.notify_all();
  }
}

}  // namespace llmcore
