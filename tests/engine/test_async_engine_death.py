"""AsyncLLMEngine.wait_for_death: returns the loop thread's error once it died, never while
it runs, and after a clean shutdown neither (with a stub LLMEngine: no model)."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

from llmcore.config.engine_config import TokenizerPoolConfig
from llmcore.engine.async_engine import AsyncLLMEngine
from llmcore.engine.protocol import EngineStats


def _engine(has_unfinished) -> AsyncLLMEngine:
    stub = SimpleNamespace(model_info=None, tokenizer=None, metrics=None,
                           config=SimpleNamespace(tokenizer_pool_config=TokenizerPoolConfig()),
                           get_stats=lambda: EngineStats(), has_unfinished_requests=has_unfinished)
    return AsyncLLMEngine(stub, start=False)


def test_wait_for_death_returns_the_loop_error():
    crash = threading.Event()
    error = RuntimeError("step failed")

    def has_unfinished():
        crash.wait()
        raise error

    eng = _engine(has_unfinished)

    async def main():
        waiter = asyncio.ensure_future(eng.wait_for_death())
        eng._thread.start()
        await asyncio.sleep(0)  # the waiter registered; the loop is blocked, alive
        assert not waiter.done() and not eng.errored
        crash.set()
        got = await asyncio.wait_for(waiter, 60)
        assert got is error and eng.errored
        assert await eng.wait_for_death() is error  # also once already dead

    asyncio.run(main())
    eng._thread.join(10)


def test_wait_for_death_pending_after_clean_shutdown():
    eng = _engine(lambda: False)

    async def main():
        eng._thread.start()
        waiter = asyncio.ensure_future(eng.wait_for_death())
        await asyncio.sleep(0)
        await asyncio.get_running_loop().run_in_executor(None, eng.shutdown)
        assert not eng._thread.is_alive() and not waiter.done() and not eng.errored
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert not eng._death_waiters  # a cancelled waiter unregisters

    asyncio.run(main())
