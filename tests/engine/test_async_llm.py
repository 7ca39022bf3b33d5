"""AsyncLLM: the servers' engine, with the engine core in its own process (default model,
CPU). Outputs equal the in-process engine's; a killed core fails every stream; cancelled
streams give their KV blocks back."""

from __future__ import annotations

import asyncio
import gc
import os
import signal

import pytest

from llmcore import LLM, SamplingParams
from llmcore.config import EngineArgs
from llmcore.engine.async_llm import AsyncLLM
from llmcore.engine.core_client import EngineDeadError
from llmcore.engine.core_types import SchedulerStats

ARGS = dict(max_model_len=256, cpu_kv_cache_space=0.1, seed=0, disable_log_stats=True)
PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "def fibonacci(n):", "Once upon a time"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=8)


async def _collect(engine, prompt, params, rid):
    last = None
    async for out in engine.generate(prompt, params, request_id=rid):
        last = out
    return last


async def _core_stats(engine) -> SchedulerStats:
    return await engine.client.call_utility_async("get_stats", result_type=SchedulerStats)


@pytest.fixture(scope="module")
def offline_reference():
    llm = LLM(**ARGS)
    return [o.outputs[0].text for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]


async def test_same_text_as_offline_and_blocks_freed(offline_reference):
    engine = AsyncLLM(EngineArgs(**ARGS))
    try:
        outs = await asyncio.gather(*[_collect(engine, p, GREEDY, f"r{i}")
                                      for i, p in enumerate(PROMPTS)])
        assert [o.outputs[0].text for o in outs] == offline_reference
        assert all(o.finished for o in outs)
        # a stream that is never iterated never reaches the core and, once dropped, leaves
        # nothing behind (its id is free again)
        gen = engine.generate(PROMPTS[0], GREEDY, request_id="never")
        assert "never" not in engine.frontend.requests
        with pytest.raises(ValueError, match="already in use"):
            engine.generate(PROMPTS[0], GREEDY, request_id="never")
        del gen
        gc.collect()
        assert "never" not in engine._streams and not engine.frontend.requests
        again = await _collect(engine, PROMPTS[0], GREEDY, "never")
        assert again.outputs[0].text == offline_reference[0]
        stats = await _core_stats(engine)
        assert stats.num_free_blocks == stats.num_total_blocks
        assert not engine.errored
    finally:
        engine.shutdown()


async def test_half_cancelled_streams_leave_no_blocks():
    engine = AsyncLLM(EngineArgs(**ARGS, max_num_seqs=64))
    params = SamplingParams(temperature=1.0, seed=7, max_tokens=12, ignore_eos=True)

    async def stream(i):
        gen = engine.generate(f"Item {i}: alpha beta", params, request_id=f"s{i}")
        try:
            async for out in gen:
                if i % 2:
                    return None  # the consumer goes away mid-stream: the request is aborted
            return out
        finally:
            await gen.aclose()

    try:
        tasks = [asyncio.create_task(stream(i)) for i in range(200)]
        results = await asyncio.gather(*tasks)
        done = [r for r in results if r is not None]
        assert len(done) == 100
        assert all(len(r.outputs[0].token_ids) == 12 for r in done)
        # aborts reach the core before this utility call (one socket, in order)
        stats = await _core_stats(engine)
        assert stats.num_free_blocks == stats.num_total_blocks, "KV blocks leaked"
        assert stats.num_running == stats.num_waiting == 0
    finally:
        engine.shutdown()


async def test_killed_core_fails_streams_and_health():
    engine = AsyncLLM(EngineArgs(**ARGS))
    try:
        got_first = asyncio.Event()

        async def long_stream():
            async for _ in engine.generate("Once upon a time", SamplingParams(
                    max_tokens=200, ignore_eos=True), request_id="long"):
                got_first.set()

        task = asyncio.create_task(long_stream())
        await got_first.wait()
        os.kill(engine.client.core_pid, signal.SIGKILL)
        with pytest.raises(EngineDeadError):
            await asyncio.wait_for(task, timeout=30)  # an upper bound only: the error is at once
        death = await asyncio.wait_for(engine.wait_for_death(), timeout=30)
        assert isinstance(death, EngineDeadError)
        assert engine.errored
        with pytest.raises(EngineDeadError):
            await engine.check_health()
        with pytest.raises(EngineDeadError):
            engine.generate("x", GREEDY)
    finally:
        engine.shutdown()


def test_mixed_batch_async_equals_alone():
    """n > 1, prompt_logprobs and beam search mixed into an async-scheduled batch give the
    same outputs as each request alone."""
    llm = LLM(**ARGS, async_scheduling=True)
    params = [SamplingParams(temperature=0.0, max_tokens=10),
              SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=6),
              SamplingParams(temperature=0.0, max_tokens=5, prompt_logprobs=2),
              SamplingParams(n=2, use_beam_search=True, temperature=0.0, max_tokens=6),
              SamplingParams(n=2, best_of=3, temperature=0.9, seed=2, max_tokens=5, logprobs=1)]
    alone = [llm.generate(PROMPTS[i % len(PROMPTS)], p, use_tqdm=False)[0]
             for i, p in enumerate(params)]
    mixed = llm.generate([PROMPTS[i % len(PROMPTS)] for i in range(len(params))], params,
                         use_tqdm=False)
    for a, b in zip(alone, mixed):
        assert [c.token_ids for c in a.outputs] == [c.token_ids for c in b.outputs]
        assert [c.text for c in a.outputs] == [c.text for c in b.outputs]
        assert [c.finish_reason for c in a.outputs] == [c.finish_reason for c in b.outputs]
        if a.prompt_logprobs is not None:
            assert [None if d is None else sorted(d) for d in a.prompt_logprobs] == \
                   [None if d is None else sorted(d) for d in b.prompt_logprobs]
    s = llm.llm_engine.scheduler
    assert s.num_free_device_blocks() == s.num_device_blocks()
