"""AsyncLLMEngine: many concurrent streams, cancellation frees KV at once."""

from __future__ import annotations

import asyncio

import pytest

from llmcore import SamplingParams
from llmcore.config import EngineArgs
from llmcore.engine.async_engine import AsyncLLMEngine


@pytest.fixture(scope="module")
def engine():
    eng = AsyncLLMEngine.from_engine_args(EngineArgs(max_model_len=512, cpu_kv_cache_space=0.25))
    yield eng
    eng.shutdown()


async def _wait_idle(engine, timeout=10.0):
    for _ in range(int(timeout / 0.05)):
        st = engine.get_stats()
        if st.num_running == 0 and st.num_waiting == 0 and st.kv_cache_usage == 0.0:
            return st
        await asyncio.sleep(0.05)
    raise AssertionError(f"engine not idle: {engine.get_stats()}")


async def test_stream_matches_offline(engine):
    params = SamplingParams(temperature=0, max_tokens=12)
    final = None
    texts = []
    async for out in engine.generate("The capital of France is", params, "r1"):
        texts.append(out.outputs[0].text)
        final = out
    assert final.finished and final.outputs[0].finish_reason == "length"
    assert all(texts[i + 1].startswith(texts[i]) for i in range(len(texts) - 1))
    assert len(texts) >= 2  # streamed, not one final blob
    await _wait_idle(engine)


async def test_validation_errors_raise_at_call(engine):
    with pytest.raises(ValueError, match="prompt"):
        engine.generate("", SamplingParams(), "bad")
    with pytest.raises(ValueError, match="vocab"):
        engine.generate([10 ** 9], SamplingParams(), "bad2")


async def test_concurrent_streams_with_cancellation(engine):
    params = SamplingParams(temperature=0.8, max_tokens=24, ignore_eos=True, seed=0)

    async def consume(i, cancel_after):
        n = 0
        last = None
        async for out in engine.generate(f"Story number {i}:", params, f"c{i}"):
            n += 1
            last = out
            if cancel_after is not None and n >= cancel_after:
                break  # closing the generator aborts the request
        return last

    tasks = [asyncio.create_task(consume(i, 2 if i % 2 else None)) for i in range(50)]
    results = await asyncio.gather(*tasks)
    for i, out in enumerate(results):
        if i % 2 == 0:
            assert out.finished and len(out.outputs[0].token_ids) == 24
        else:
            assert not out.finished
    st = await _wait_idle(engine)
    assert st.num_free_blocks == st.num_total_blocks


async def test_task_cancellation_aborts(engine):
    started = asyncio.Event()

    async def consume():
        async for _ in engine.generate("Count to one hundred:", SamplingParams(max_tokens=400, ignore_eos=True),
                                       "cancel-me"):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _wait_idle(engine)


async def test_health(engine):
    await engine.check_health()
    assert not engine.errored
