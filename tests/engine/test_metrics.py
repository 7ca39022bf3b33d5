"""EngineMetrics: vLLM's metric names; the TPOT histogram is exported as an alias of ITL."""

from prometheus_client import generate_latest

from llmcore.metrics import EngineMetrics


def _series(text: str, name: str) -> list:
    return sorted(line[len(name):] for line in text.splitlines() if line.startswith(name + "_"))


def test_tpot_alias_mirrors_inter_token_latency():
    m = EngineMetrics("m")
    for v in (0.003, 0.03, 0.3, 3.0):
        m.inter_token_latency_seconds.observe(v)
    text = generate_latest(m.registry).decode()
    itl = _series(text, "vllm:inter_token_latency_seconds")
    tpot = _series(text, "vllm:time_per_output_token_seconds")
    assert itl and tpot == itl
    assert "# TYPE vllm:time_per_output_token_seconds histogram" in text
    assert 'vllm:time_per_output_token_seconds_count{model_name="m"} 4.0' in text
    assert 'vllm:time_per_output_token_seconds_bucket{le="0.005",model_name="m"} 1.0' in text
    # a second registry's metrics are its own
    assert "_count{model_name=\"m\"} 0.0" in generate_latest(EngineMetrics("m").registry).decode()
