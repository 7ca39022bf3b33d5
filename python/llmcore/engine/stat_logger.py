"""The periodic stats line a serving engine logs (vLLM's format), off with --disable-log-stats.

Rates are taken over the interval between two lines from the engine's cumulative counters,
so nothing is added to the per-token path: the engine thread hands over a stats snapshot it
takes anyway, and a line is formatted at most once per interval.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

from llmcore.engine.protocol import EngineStats

logger = logging.getLogger("llmcore.engine")


class StatLogger:
    def __init__(self, interval_s: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 log: Optional[Callable[[str], None]] = None):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = interval_s
        self._clock = clock
        self._log = log if log is not None else logger.info
        self._last_time = clock()
        self._last_prompt = 0
        self._last_generated = 0

    def maybe_log(self, stats: EngineStats) -> Optional[str]:
        """Log (and return) one line if an interval has passed and the engine was not idle
        through all of it; otherwise None."""
        now = self._clock()
        elapsed = now - self._last_time
        if elapsed < self.interval_s:
            return None
        prompt = stats.prompt_tokens_total - self._last_prompt
        generated = stats.generation_tokens_total - self._last_generated
        self._last_time = now
        self._last_prompt = stats.prompt_tokens_total
        self._last_generated = stats.generation_tokens_total
        if prompt == 0 and generated == 0 and not (stats.num_running or stats.num_waiting
                                                   or stats.num_swapped):
            return None  # idle: nothing worth a line
        line = (f"Avg prompt throughput: {prompt / elapsed:.1f} tokens/s, "
                f"Avg generation throughput: {generated / elapsed:.1f} tokens/s, "
                f"Running: {stats.num_running} reqs, Swapped: {stats.num_swapped} reqs, "
                f"Pending: {stats.num_waiting} reqs, "
                f"KV cache usage: {100.0 * stats.kv_cache_usage:.1f}%, "
                f"Prefix cache hit rate: {100.0 * stats.prefix_cache_hit_rate:.1f}%")
        self._log(line)
        return line
