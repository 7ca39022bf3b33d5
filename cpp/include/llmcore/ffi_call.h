#pragma once
// A call through tvm-ffi's stable C ABI (tvm/ffi/c_api.h) on a thread of our own.
//
// Why: xgrammar's grammar-mask fill is a tvm-ffi function that runs without the GIL, but a
// Python thread that makes the call must first take the GIL, which the engine's busy main
// thread gives up only every 5 ms (the interpreter's switch interval). A native thread
// needs no GIL at all, so the fill runs while the main thread launches the next forward.
//
// The ABI is declared here (three functions and two structs), not included: the build does
// not depend on tvm-ffi, which is found at run time in the already-loaded library.

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace llmcore {

// TVMFFIAny: a type index and an 8-byte value (a POD or a TVMFFIObject*).
struct FfiAny {
  int32_t type_index = 0;   // kTVMFFINone
  uint32_t zero_padding = 0;
  uint64_t value = 0;
};
static_assert(sizeof(FfiAny) == 16, "TVMFFIAny is 16 bytes");

constexpr int32_t kFfiNone = 0;
constexpr int32_t kFfiInt = 1;
constexpr int32_t kFfiBool = 2;
constexpr int32_t kFfiStaticObjectBegin = 64;   // type indices of objects start here

// The C functions a call needs (TVMFFIFunctionCall, TVMFFIErrorMoveFromRaised,
// TVMFFIObjectDecRef); tests pass fakes.
struct FfiApi {
  int (*function_call)(void* func, FfiAny* args, int32_t num_args, FfiAny* result) = nullptr;
  void (*error_move_from_raised)(void** error) = nullptr;
  int (*object_dec_ref)(void* obj) = nullptr;
};

// The API of the tvm-ffi library at `library_path`, which must be loaded already (the
// Python package loads it); std::runtime_error naming what is missing otherwise.
FfiApi load_ffi_api(const std::string& library_path);

// An argument that is an object: its type index is read from the object's header.
FfiAny ffi_object_arg(void* object);
FfiAny ffi_int_arg(int64_t v);
FfiAny ffi_bool_arg(bool v);

// One function call: the function object and its arguments.
struct FfiCall {
  void* func = nullptr;
  std::vector<FfiAny> args;
};

// One worker thread running one job at a time: start() hands it a few calls, made in order
// (the first error ends the job), wait() returns the outcome. The caller keeps every
// function and object argument alive until wait() returns.
class FfiCallThread {
 public:
  explicit FfiCallThread(FfiApi api);
  ~FfiCallThread();
  FfiCallThread(const FfiCallThread&) = delete;
  FfiCallThread& operator=(const FfiCallThread&) = delete;

  // std::logic_error if a started job has not been waited for; std::invalid_argument for
  // a call without a function.
  void start(std::vector<FfiCall> calls);
  // Blocks until the started job ends: "" on success, else the first error ("Kind: message").
  // std::logic_error if nothing was started.
  std::string wait();
  bool pending() const;

 private:
  void run();
  std::string call(FfiCall& c);

  FfiApi api_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool has_job_ = false;      // started, not yet picked up or finished
  bool done_ = false;         // the job returned; error_ holds its outcome
  bool waited_ = true;        // wait() took the last outcome
  bool stop_ = false;
  std::vector<FfiCall> calls_;
  std::string error_;
  std::thread thread_;
};

}  // namespace llmcore
