// FfiCallThread against fake tvm-ffi C functions: a job's calls run in order on its own
// thread with the arguments given, the first error ends the job and comes back as
// "Kind: message" (the error object released), an object result is released, and misuse
// is refused.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <vector>

#include "llmcore/ffi_call.h"

namespace {

using llmcore::FfiAny;
using llmcore::FfiApi;
using llmcore::FfiCallThread;

// the fakes' shared state (one test at a time)
std::vector<FfiAny> g_args;                  // the last call's
std::vector<std::vector<FfiAny>> g_calls;    // every call's, in order
std::thread::id g_call_thread;
std::atomic<int> g_dec_refs{0};
void* g_last_dec_ref = nullptr;
// 0: ok, 1: raise an error, 2: return an object, 3: block until released, 4: raise on a
// call whose first argument is the int 2
int g_mode = 0;
std::atomic<bool> g_release{false};

// An object as tvm-ffi lays it out: ref count, type index, padding, deleter; then (for an
// error) the cell's kind and message byte arrays.
struct FakeObject {
  uint64_t refs = 1;
  int32_t type_index = 0;
  uint32_t padding = 0;
  void* deleter = nullptr;
  const char* kind_data = nullptr;
  size_t kind_size = 0;
  const char* msg_data = nullptr;
  size_t msg_size = 0;
};
FakeObject g_error;
FakeObject g_result;

int fake_call(void*, FfiAny* args, int32_t n, FfiAny* result) {
  g_call_thread = std::this_thread::get_id();
  g_args.assign(args, args + n);
  g_calls.push_back(g_args);
  if (g_mode == 1) return -1;
  if (g_mode == 4 && n > 0 && args[0].type_index == llmcore::kFfiInt && args[0].value == 2) {
    return -1;
  }
  if (g_mode == 2) {
    g_result.type_index = 70;
    *result = llmcore::ffi_object_arg(&g_result);
  }
  if (g_mode == 3) {
    while (!g_release.load()) std::this_thread::yield();
  }
  return 0;
}

void fake_move_from_raised(void** err) {
  static const char kind[] = "ValueError";
  static const char msg[] = "bad bitmask";
  g_error.type_index = 66;
  g_error.kind_data = kind;
  g_error.kind_size = sizeof(kind) - 1;
  g_error.msg_data = msg;
  g_error.msg_size = sizeof(msg) - 1;
  *err = &g_error;
}

int fake_dec_ref(void* obj) {
  g_last_dec_ref = obj;
  ++g_dec_refs;
  return 0;
}

FfiApi fake_api() {
  FfiApi api;
  api.function_call = fake_call;
  api.error_move_from_raised = fake_move_from_raised;
  api.object_dec_ref = fake_dec_ref;
  return api;
}

void reset(int mode) {
  g_args.clear();
  g_calls.clear();
  g_dec_refs = 0;
  g_last_dec_ref = nullptr;
  g_mode = mode;
  g_release = false;
}

int dummy_func;

std::vector<llmcore::FfiCall> one(std::vector<FfiAny> args) {
  std::vector<llmcore::FfiCall> calls(1);
  calls[0].func = &dummy_func;
  calls[0].args = std::move(args);
  return calls;
}

}  // namespace

TEST(FfiCall, PassesArgumentsOnItsOwnThread) {
  reset(0);
  FfiCallThread t(fake_api());
  FakeObject obj;
  obj.type_index = 123;
  t.start(one({llmcore::ffi_object_arg(&obj), llmcore::ffi_int_arg(-5),
               llmcore::ffi_bool_arg(true), FfiAny{}}));
  EXPECT_EQ(t.wait(), "");
  EXPECT_FALSE(t.pending());
  EXPECT_NE(g_call_thread, std::this_thread::get_id());
  ASSERT_EQ(g_args.size(), 4u);
  EXPECT_EQ(g_args[0].type_index, 123);   // read from the object's header
  EXPECT_EQ(g_args[0].value, reinterpret_cast<uintptr_t>(&obj));
  EXPECT_EQ(g_args[1].type_index, llmcore::kFfiInt);
  int64_t v;
  std::memcpy(&v, &g_args[1].value, sizeof(v));
  EXPECT_EQ(v, -5);
  EXPECT_EQ(g_args[2].type_index, llmcore::kFfiBool);
  EXPECT_EQ(g_args[2].value, 1u);
  EXPECT_EQ(g_args[3].type_index, llmcore::kFfiNone);
  EXPECT_EQ(g_dec_refs.load(), 0);
}

TEST(FfiCall, ErrorComesBackAndIsReleased) {
  reset(1);
  FfiCallThread t(fake_api());
  t.start(one({}));
  EXPECT_EQ(t.wait(), "ValueError: bad bitmask");
  EXPECT_EQ(g_dec_refs.load(), 1);
  EXPECT_EQ(g_last_dec_ref, &g_error);
  // the thread serves the next call
  reset(0);
  t.start(one({llmcore::ffi_int_arg(1)}));
  EXPECT_EQ(t.wait(), "");
}

TEST(FfiCall, CallsRunInOrderAndTheFirstErrorEndsTheJob) {
  reset(4);
  FfiCallThread t(fake_api());
  std::vector<llmcore::FfiCall> calls(3);
  for (int i = 0; i < 3; ++i) {
    calls[i].func = &dummy_func;
    calls[i].args = {llmcore::ffi_int_arg(i + 1)};
  }
  t.start(calls);
  EXPECT_EQ(t.wait(), "ValueError: bad bitmask");   // the second call raised
  ASSERT_EQ(g_calls.size(), 2u);                      // the third never ran
  EXPECT_EQ(g_calls[0][0].value, 1u);
  EXPECT_EQ(g_calls[1][0].value, 2u);
  reset(0);
  calls.pop_back();
  t.start(calls);
  EXPECT_EQ(t.wait(), "");
  EXPECT_EQ(g_calls.size(), 2u);
}

TEST(FfiCall, ObjectResultIsReleased) {
  reset(2);
  FfiCallThread t(fake_api());
  t.start(one({}));
  EXPECT_EQ(t.wait(), "");
  EXPECT_EQ(g_dec_refs.load(), 1);
  EXPECT_EQ(g_last_dec_ref, &g_result);
}

TEST(FfiCall, PendingUntilWaitedAndOneCallAtATime) {
  reset(3);
  FfiCallThread t(fake_api());
  t.start(one({}));
  EXPECT_TRUE(t.pending());
  EXPECT_THROW(t.start(one({})), std::logic_error);
  g_release = true;
  EXPECT_EQ(t.wait(), "");
  EXPECT_THROW(t.wait(), std::logic_error);   // nothing started
}

TEST(FfiCall, DestructorWaitsForARunningCall) {
  reset(3);
  {
    FfiCallThread t(fake_api());
    t.start(one({llmcore::ffi_int_arg(7)}));
    std::thread releaser([] {
      std::this_thread::yield();
      g_release = true;
    });
    releaser.join();
  }   // joins: the call ran to its end
  EXPECT_EQ(g_args.size(), 1u);
}

TEST(FfiCall, RefusesAMissingFunction) {
  FfiApi api = fake_api();
  api.object_dec_ref = nullptr;
  EXPECT_THROW(FfiCallThread t(api), std::invalid_argument);
  FfiCallThread t(fake_api());
  auto calls = one({});
  calls[0].func = nullptr;
  EXPECT_THROW(t.start(calls), std::invalid_argument);
}

TEST(FfiCall, LoadApiNamesALibraryThatIsNotLoaded) {
  try {
    llmcore::load_ffi_api("/nonexistent/libtvm_ffi.so");
    FAIL() << "expected std::runtime_error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/libtvm_ffi.so"), std::string::npos);
  }
}
