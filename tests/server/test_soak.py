"""A short soak of a real llmcore-server subprocess (benchmarks/soak.py): 50 concurrent
clients for 25 s of streams, cancels, disconnects mid-stream and bad requests, then the
same checks as the 10-minute soak, except the latency ratio (too noisy on a shared CI
machine for a run this short) and with a wider RSS band: a short run is still warming up
(the engine core's RSS grows for its first few hundred steps, then levels off), so here the
band only guards against gross leaks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOAK = os.path.join(REPO, "benchmarks", "soak.py")


@pytest.mark.slow
def test_short_soak(tmp_path):
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, SOAK, "--duration", "25", "--streams", "50", "--json", str(out),
         "--rss-tolerance", "0.4", "--itl-ratio", "1000"],
        capture_output=True, text=True, timeout=600)
    assert out.exists(), proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    report = proc.stdout + "\n" + res.get("server_log_tail", "")
    assert res["num_5xx"] == 0, report
    assert res["num_unexpected"] == 0, res["unexpected"]
    assert res["actions"].get("cancel", 0) > 0 and res["actions"].get("disconnect", 0) > 0
    assert res["actions"].get("bad", 0) > 0 and res["tokens"] > 0
    m = res["end_metrics"]
    assert m["vllm:kv_cache_usage_perc"] == 0.0, report
    assert m["vllm:num_requests_running"] == 0.0 and m["vllm:num_requests_waiting"] == 0.0
    assert res["rss_max_deviation"] <= 0.4, res["rss_samples"]
    assert res["server_exit_code_before_stop"] is None   # it was still serving
    assert proc.returncode == 0, report
