"""Prometheus metrics of one engine, under vLLM's names so existing dashboards work.

Each engine owns its own CollectorRegistry (no process-global state); the HTTP front
end exposes it at /metrics with `prometheus_client.generate_latest(metrics.registry)`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

PREFIX = "vllm:"

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0, 20.0, 40.0, 80.0)
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                120.0, 240.0, 480.0, 960.0)


class HistogramAlias:
    """Exposes a histogram's series under a second name. vLLM exports the per-token
    time_per_output_token_seconds with the same values as inter_token_latency_seconds; one
    observation per generated token instead of two (the engine thread observes every token
    of every running sequence)."""

    def __init__(self, source: Histogram, name: str, documentation: str):
        self._source, self._name, self._doc = source, name, documentation

    def collect(self):
        for family in self._source.collect():
            alias = Metric(self._name, self._doc, "histogram")
            for s in family.samples:
                alias.add_sample(self._name + s.name[len(family.name):], s.labels, s.value,
                                 s.timestamp, s.exemplar)
            yield alias


class EngineMetrics:
    def __init__(self, model_name: str):
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["model_name"]
        r = self.registry
        self._label = {"model_name": model_name}

        def gauge(name, doc):
            return Gauge(PREFIX + name, doc, labels, registry=r).labels(**self._label)

        def counter(name, doc):
            return Counter(PREFIX + name, doc, labels, registry=r).labels(**self._label)

        def hist(name, doc, buckets):
            return Histogram(PREFIX + name, doc, labels, buckets=buckets, registry=r).labels(**self._label)

        self.num_requests_running = gauge("num_requests_running", "Requests running on the device.")
        self.num_requests_waiting = gauge("num_requests_waiting", "Requests waiting to be scheduled.")
        self.num_requests_swapped = gauge("num_requests_swapped", "Requests swapped to CPU.")
        self.kv_cache_usage_perc = gauge("kv_cache_usage_perc", "Fraction of KV cache blocks in use (0-1).")
        self.gpu_cache_usage_perc = gauge("gpu_cache_usage_perc",
                                          "Fraction of device KV cache blocks in use (0-1).")
        self.prefix_cache_hit_rate = gauge("gpu_prefix_cache_hit_rate", "Prefix cache hit rate (0-1).")
        self.prompt_tokens_total = counter("prompt_tokens", "Prompt tokens processed.")
        self.generation_tokens_total = counter("generation_tokens", "Generated tokens.")
        self.num_preemptions_total = counter("num_preemptions", "Cumulative preemptions.")
        self._request_success = Counter(PREFIX + "request_success", "Finished requests.",
                                        labels + ["finished_reason"], registry=r)
        self.time_to_first_token_seconds = hist("time_to_first_token_seconds",
                                                "Time to first token.", _LATENCY_BUCKETS)
        itl = Histogram(PREFIX + "inter_token_latency_seconds", "Time between output tokens.",
                        labels, buckets=_LATENCY_BUCKETS, registry=r)
        self.inter_token_latency_seconds = itl.labels(**self._label)
        r.register(HistogramAlias(itl, PREFIX + "time_per_output_token_seconds",
                                  "Time per output token (alias of inter_token_latency_seconds)."))
        self.e2e_request_latency_seconds = hist("e2e_request_latency_seconds",
                                                "End-to-end request latency.", _E2E_BUCKETS)
        self._last_preemptions = 0

    def request_finished(self, finish_reason: str) -> None:
        self._request_success.labels(finished_reason=finish_reason, **self._label).inc()

    def set_preemptions(self, total: int) -> None:
        if total > self._last_preemptions:
            self.num_preemptions_total.inc(total - self._last_preemptions)
            self._last_preemptions = total
