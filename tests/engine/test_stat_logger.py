"""The periodic stats line (--disable-log-stats turns it off)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from llmcore import SamplingParams
from llmcore.config import EngineArgs
from llmcore.engine.async_engine import AsyncLLMEngine
from llmcore.engine.protocol import EngineStats
from llmcore.engine.stat_logger import StatLogger


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_rates_over_the_interval_and_idle_intervals_skipped():
    clock, lines = _Clock(), []
    sl = StatLogger(interval_s=5.0, clock=clock, log=lines.append)
    st = EngineStats(num_running=3, num_waiting=2, kv_cache_usage=0.25, prefix_cache_hit_rate=0.5,
                     prompt_tokens_total=1000, generation_tokens_total=400)
    clock.t += 4.9
    assert sl.maybe_log(st) is None  # interval not over yet
    clock.t += 0.1
    line = sl.maybe_log(st)
    assert line == lines[-1]
    assert "Avg prompt throughput: 200.0 tokens/s" in line
    assert "Avg generation throughput: 80.0 tokens/s" in line
    assert "Running: 3 reqs, Swapped: 0 reqs, Pending: 2 reqs" in line
    assert "KV cache usage: 25.0%" in line and "Prefix cache hit rate: 50.0%" in line
    # next interval: rates are deltas over it, not cumulative
    st.prompt_tokens_total, st.generation_tokens_total = 1000, 900
    clock.t += 10.0
    assert "Avg prompt throughput: 0.0 tokens/s, Avg generation throughput: 50.0" in sl.maybe_log(st)
    # idle through a whole interval: no line
    st.num_running = st.num_waiting = 0
    clock.t += 10.0
    assert sl.maybe_log(st) is None and len(lines) == 2


def test_interval_must_be_positive():
    with pytest.raises(ValueError, match="interval_s"):
        StatLogger(interval_s=0)


@pytest.mark.parametrize("disable", [False, True])
def test_serving_engine_logs_stats_unless_disabled(disable, caplog):
    eng = AsyncLLMEngine.from_engine_args(EngineArgs(max_model_len=256, cpu_kv_cache_space=0.1,
                                                     disable_log_stats=disable))
    try:
        assert (eng._stat_logger is None) == disable
        if not disable:
            eng._stat_logger.interval_s = 0.01  # a line after (almost) every step

        async def run():
            params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
            streams = [eng.generate(f"Count {i}:", params) for i in range(3)]

            async def drain(s):
                return [o async for o in s][-1]
            return await asyncio.gather(*(drain(s) for s in streams))

        with caplog.at_level(logging.INFO, logger="llmcore.engine"):
            finals = asyncio.run(run())
        assert all(len(f.outputs[0].token_ids) == 8 for f in finals)
        lines = [r.getMessage() for r in caplog.records if "Avg generation throughput" in r.getMessage()]
        assert bool(lines) != disable
    finally:
        eng.shutdown()
