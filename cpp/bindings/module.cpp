#include "bindings.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "llmcore C++ core: paged KV block allocator and continuous-batching scheduler";
  llmcore::bind_block_allocator(m);
  llmcore::bind_scheduler(m);
  llmcore::bind_cpu_attention(m);
  llmcore::bind_cpu_token_bitmask(m);
  llmcore::bind_cpu_sampling(m);
  llmcore::bind_ffi_call(m);
}
