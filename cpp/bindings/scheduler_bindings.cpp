#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <optional>
#include <stdexcept>
#include <string>

#include "bindings.h"
#include "llmcore/scheduler.h"

namespace py = pybind11;

namespace llmcore {

namespace {

using I32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// numpy view of a vector owned by the SchedulerOutput behind `self` (no copy;
// the array keeps `self` alive through its base).
template <typename T>
py::array view(const std::vector<T>& v, py::handle self, std::vector<py::ssize_t> shape,
               const py::dtype& dt = py::dtype::of<T>()) {
  return py::array(dt, std::move(shape), std::vector<py::ssize_t>{}, v.data(), self);
}

template <typename T>
py::array pairs_view(const std::vector<T>& v, py::handle self) {
  return view(v, self, {static_cast<py::ssize_t>(v.size() / 2), 2});
}

const SchedulerOutput& so(py::handle self) { return self.cast<const SchedulerOutput&>(); }

// Checks a (seq_ids, counts[, flat values]) triple and returns the number of seqs.
size_t check_counts(const char* fn, const I64Array& seq_ids, const I32Array& counts,
                    const I32Array* values) {
  if (seq_ids.ndim() != 1 || counts.ndim() != 1)
    throw py::value_error(std::string(fn) + ": seq_ids and counts must be one-dimensional");
  if (seq_ids.size() != counts.size())
    throw py::value_error(std::string(fn) + ": seq_ids and counts differ in length");
  if (values) {
    if (values->ndim() != 1)
      throw py::value_error(std::string(fn) + ": token_ids must be one-dimensional");
    int64_t total = 0;
    const int32_t* c = counts.data();
    for (py::ssize_t i = 0; i < counts.size(); ++i) {
      if (c[i] < 0) throw py::value_error(std::string(fn) + ": counts must be >= 0");
      total += c[i];
    }
    if (total != values->size())
      throw py::value_error(std::string(fn) + ": token_ids holds " +
                            std::to_string(values->size()) + " values, counts sum to " +
                            std::to_string(total));
  }
  return static_cast<size_t>(seq_ids.size());
}

std::string mode_name(PreemptionMode m) {
  return m == PreemptionMode::kSwap ? "swap" : "recompute";
}

}  // namespace

void bind_scheduler(py::module_& m) {
  py::class_<SchedulerConfig>(m, "SchedulerConfig")
      .def(py::init<>())
      .def_readwrite("block_size", &SchedulerConfig::block_size)
      .def_readwrite("num_device_blocks", &SchedulerConfig::num_device_blocks)
      .def_readwrite("num_cpu_blocks", &SchedulerConfig::num_cpu_blocks)
      .def_readwrite("max_num_seqs", &SchedulerConfig::max_num_seqs)
      .def_readwrite("max_num_batched_tokens", &SchedulerConfig::max_num_batched_tokens)
      .def_readwrite("max_model_len", &SchedulerConfig::max_model_len)
      .def_readwrite("enable_chunked_prefill", &SchedulerConfig::enable_chunked_prefill)
      .def_readwrite("enable_prefix_caching", &SchedulerConfig::enable_prefix_caching)
      .def_readwrite("watermark", &SchedulerConfig::watermark)
      .def_readwrite("delay_factor", &SchedulerConfig::delay_factor)
      .def_readwrite("num_micro_batches", &SchedulerConfig::num_micro_batches)
      .def_property(
          "preemption_mode",
          [](const SchedulerConfig& c) { return mode_name(c.preemption_mode); },
          [](SchedulerConfig& c, const std::string& v) {
            if (v == "recompute") c.preemption_mode = PreemptionMode::kRecompute;
            else if (v == "swap") c.preemption_mode = PreemptionMode::kSwap;
            else throw py::value_error("preemption_mode must be 'recompute' or 'swap', got '" + v + "'");
          })
      .def("validate", &SchedulerConfig::validate)
      .def("__repr__", [](const SchedulerConfig& c) {
        return "SchedulerConfig(block_size=" + std::to_string(c.block_size) +
               ", num_device_blocks=" + std::to_string(c.num_device_blocks) +
               ", num_cpu_blocks=" + std::to_string(c.num_cpu_blocks) +
               ", max_num_seqs=" + std::to_string(c.max_num_seqs) +
               ", max_num_batched_tokens=" + std::to_string(c.max_num_batched_tokens) +
               ", max_model_len=" + std::to_string(c.max_model_len) +
               ", enable_chunked_prefill=" + (c.enable_chunked_prefill ? "True" : "False") +
               ", enable_prefix_caching=" + (c.enable_prefix_caching ? "True" : "False") +
               ", preemption_mode='" + mode_name(c.preemption_mode) +
               "', watermark=" + std::to_string(c.watermark) +
               ", num_micro_batches=" + std::to_string(c.num_micro_batches) + ")";
      });

  py::class_<SchedulerOutput, std::shared_ptr<SchedulerOutput>>(m, "SchedulerOutput")
      .def_property_readonly("num_seqs", [](py::handle s) { return so(s).num_seqs; })
      .def_property_readonly("num_prefill_seqs", [](py::handle s) { return so(s).num_prefill_seqs; })
      .def_property_readonly("num_batched_tokens", [](py::handle s) { return so(s).num_batched_tokens; })
      .def_property_readonly("seq_ids", [](py::handle s) { return view(so(s).seq_ids, s, {so(s).num_seqs}); })
      .def_property_readonly("request_ids", [](py::handle s) { return view(so(s).request_ids, s, {so(s).num_seqs}); })
      .def_property_readonly("num_tokens", [](py::handle s) { return view(so(s).num_tokens, s, {so(s).num_seqs}); })
      .def_property_readonly("context_lens", [](py::handle s) { return view(so(s).context_lens, s, {so(s).num_seqs}); })
      .def_property_readonly("seq_lens", [](py::handle s) { return view(so(s).seq_lens, s, {so(s).num_seqs}); })
      .def_property_readonly("do_sample", [](py::handle s) {
        return view(so(s).do_sample, s, {so(s).num_seqs}, py::dtype("bool"));
      })
      .def_property_readonly("query_start_loc", [](py::handle s) {
        return view(so(s).query_start_loc, s, {so(s).num_seqs + 1});
      })
      .def_property_readonly("input_ids", [](py::handle s) { return view(so(s).input_ids, s, {so(s).num_batched_tokens}); })
      .def_property_readonly("positions", [](py::handle s) { return view(so(s).positions, s, {so(s).num_batched_tokens}); })
      .def_property_readonly("slot_mapping", [](py::handle s) { return view(so(s).slot_mapping, s, {so(s).num_batched_tokens}); })
      .def_property_readonly("block_tables", [](py::handle s) {
        return view(so(s).block_tables, s, {so(s).num_seqs, so(s).max_blocks});
      })
      .def_property_readonly("blocks_to_swap_in", [](py::handle s) { return pairs_view(so(s).blocks_to_swap_in, s); })
      .def_property_readonly("blocks_to_swap_out", [](py::handle s) { return pairs_view(so(s).blocks_to_swap_out, s); })
      .def_property_readonly("blocks_to_copy", [](py::handle s) { return pairs_view(so(s).blocks_to_copy, s); })
      .def_property_readonly("preempted_request_ids", [](py::handle s) {
        const auto& v = so(s).preempted_request_ids;
        return view(v, s, {static_cast<py::ssize_t>(v.size())});
      })
      .def_property_readonly("is_new", [](py::handle s) {
        return view(so(s).is_new, s, {so(s).num_seqs}, py::dtype("bool"));
      })
      .def_property_readonly("finished_seq_ids", [](py::handle s) {
        const auto& v = so(s).finished_seq_ids;
        return view(v, s, {static_cast<py::ssize_t>(v.size())});
      })
      .def_property_readonly("preempted_seq_ids", [](py::handle s) {
        const auto& v = so(s).preempted_seq_ids;
        return view(v, s, {static_cast<py::ssize_t>(v.size())});
      })
      .def("__repr__", [](const SchedulerOutput& o) {
        return "SchedulerOutput(num_seqs=" + std::to_string(o.num_seqs) +
               ", num_prefill_seqs=" + std::to_string(o.num_prefill_seqs) +
               ", num_batched_tokens=" + std::to_string(o.num_batched_tokens) + ")";
      });

  py::class_<Scheduler>(m, "Scheduler")
      .def(py::init<const SchedulerConfig&>(), py::arg("config"))
      .def_property_readonly("config", &Scheduler::config)
      .def(
          "add_request",
          [](Scheduler& s, int64_t request_id, int64_t seq_id, const I32Array& prompt,
             double arrival_time, int32_t priority, uint64_t extra_hash_key,
             bool allow_prefix_cache) {
            if (prompt.ndim() != 1)
              throw py::value_error("prompt_token_ids must be one-dimensional");
            s.add_request(request_id, seq_id, prompt.data(), static_cast<size_t>(prompt.size()),
                          arrival_time, priority, extra_hash_key, allow_prefix_cache);
          },
          py::arg("request_id"), py::arg("seq_id"), py::arg("prompt_token_ids"),
          py::arg("arrival_time") = 0.0, py::arg("priority") = 0,
          py::arg("extra_hash_key") = 0, py::arg("allow_prefix_cache") = true)
      .def("fork", &Scheduler::fork, py::arg("parent_seq_id"), py::arg("child_seq_id"))
      .def(
          "update",
          [](Scheduler& s, const I64Array& seq_ids, const I32Array& token_ids) {
            if (seq_ids.ndim() != 1 || token_ids.ndim() != 1)
              throw py::value_error("update: arrays must be one-dimensional");
            if (seq_ids.size() != token_ids.size())
              throw py::value_error("update: seq_ids and token_ids differ in length");
            s.update(seq_ids.data(), token_ids.data(), static_cast<size_t>(seq_ids.size()));
          },
          py::arg("seq_ids"), py::arg("token_ids"))
      .def(
          "append_placeholders",
          [](Scheduler& s, const I64Array& seq_ids, const std::optional<I32Array>& counts) {
            if (!counts) {
              if (seq_ids.ndim() != 1)
                throw py::value_error("append_placeholders: seq_ids must be one-dimensional");
              s.append_placeholders(seq_ids.data(), static_cast<size_t>(seq_ids.size()));
              return;
            }
            const size_t n = check_counts("append_placeholders", seq_ids, *counts, nullptr);
            s.append_placeholders(seq_ids.data(), counts->data(), n);
          },
          py::arg("seq_ids"), py::arg("counts") = py::none())
      .def(
          "set_tokens",
          [](Scheduler& s, const I64Array& seq_ids, const I32Array& counts,
             const I32Array& token_ids) {
            const size_t n = check_counts("set_tokens", seq_ids, counts, &token_ids);
            s.set_tokens(seq_ids.data(), counts.data(), token_ids.data(), n);
          },
          py::arg("seq_ids"), py::arg("counts"), py::arg("token_ids"))
      .def(
          "update_multi",
          [](Scheduler& s, const I64Array& seq_ids, const I32Array& counts,
             const I32Array& token_ids) {
            const size_t n = check_counts("update_multi", seq_ids, counts, &token_ids);
            s.update_multi(seq_ids.data(), counts.data(), token_ids.data(), n);
          },
          py::arg("seq_ids"), py::arg("counts"), py::arg("token_ids"))
      .def(
          "rollback",
          [](Scheduler& s, const I64Array& seq_ids, const I32Array& num_tokens) {
            const size_t n = check_counts("rollback", seq_ids, num_tokens, nullptr);
            s.rollback(seq_ids.data(), num_tokens.data(), n);
          },
          py::arg("seq_ids"), py::arg("num_tokens"))
      .def(
          "set_last_tokens",
          [](Scheduler& s, const I64Array& seq_ids, const I32Array& token_ids) {
            if (seq_ids.ndim() != 1 || token_ids.ndim() != 1 || seq_ids.size() != token_ids.size())
              throw py::value_error("set_last_tokens: need two 1-D arrays of the same length");
            s.set_last_tokens(seq_ids.data(), token_ids.data(), static_cast<size_t>(seq_ids.size()));
          },
          py::arg("seq_ids"), py::arg("token_ids"))
      .def(
          "mark_in_flight",
          [](Scheduler& s, const I64Array& seq_ids) {
            if (seq_ids.ndim() != 1)
              throw py::value_error("mark_in_flight: seq_ids must be one-dimensional");
            s.mark_in_flight(seq_ids.data(), static_cast<size_t>(seq_ids.size()));
          },
          py::arg("seq_ids"))
      .def(
          "clear_in_flight",
          [](Scheduler& s, const I64Array& seq_ids) {
            if (seq_ids.ndim() != 1)
              throw py::value_error("clear_in_flight: seq_ids must be one-dimensional");
            s.clear_in_flight(seq_ids.data(), static_cast<size_t>(seq_ids.size()));
          },
          py::arg("seq_ids"))
      .def("is_in_flight", &Scheduler::is_in_flight, py::arg("seq_id"))
      .def("num_in_flight", &Scheduler::num_in_flight)
      .def("finish_seq", &Scheduler::finish_seq, py::arg("seq_id"))
      .def("abort_request", &Scheduler::abort_request, py::arg("request_id"))
      .def("schedule", &Scheduler::schedule, py::arg("now") = 0.0)
      .def("has_unfinished", &Scheduler::has_unfinished)
      .def("num_waiting", &Scheduler::num_waiting)
      .def("num_running", &Scheduler::num_running)
      .def("num_swapped", &Scheduler::num_swapped)
      .def("num_free_device_blocks", &Scheduler::num_free_device_blocks)
      .def("num_free_cpu_blocks", &Scheduler::num_free_cpu_blocks)
      .def("num_device_blocks", &Scheduler::num_device_blocks)
      .def("num_cpu_blocks", &Scheduler::num_cpu_blocks)
      .def("device_usage", &Scheduler::device_usage)
      .def("cpu_usage", &Scheduler::cpu_usage)
      .def("prefix_cache_hit_rate", &Scheduler::prefix_cache_hit_rate)
      .def("prefix_cache_queried_tokens", &Scheduler::prefix_cache_queried_tokens)
      .def("prefix_cache_hit_tokens", &Scheduler::prefix_cache_hit_tokens)
      .def("num_preemptions", &Scheduler::num_preemptions)
      .def("block_table", &Scheduler::block_table, py::arg("seq_id"))
      .def("cpu_block_table", &Scheduler::cpu_block_table, py::arg("seq_id"))
      .def("seq_len", &Scheduler::seq_len, py::arg("seq_id"))
      .def("num_computed", &Scheduler::num_computed, py::arg("seq_id"))
      .def("token_ids", &Scheduler::token_ids, py::arg("seq_id"))
      .def("request_of", &Scheduler::request_of, py::arg("seq_id"))
      .def("has_seq", &Scheduler::has_seq, py::arg("seq_id"))
      .def("has_request", &Scheduler::has_request, py::arg("request_id"))
      .def("ref_count", &Scheduler::ref_count, py::arg("block_id"))
      .def("is_cached", [](const Scheduler& s, int32_t b) { return s.allocator().is_cached(b); },
           py::arg("block_id"))
      .def("check_invariants", &Scheduler::check_invariants);
}

}  // namespace llmcore
