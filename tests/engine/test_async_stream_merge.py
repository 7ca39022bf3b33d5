"""A stream that fell behind gets the newest cumulative snapshot, not every stale one."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from llmcore.config.engine_config import TokenizerPoolConfig
from llmcore.engine.async_engine import AsyncLLMEngine, _Stream
from llmcore.engine.protocol import EngineStats


def _engine() -> AsyncLLMEngine:
    stub = SimpleNamespace(model_info=None, tokenizer=None, metrics=None,
                           config=SimpleNamespace(tokenizer_pool_config=TokenizerPoolConfig()),
                           get_stats=lambda: EngineStats())
    return AsyncLLMEngine(stub, start=False)  # no engine thread: the test feeds the queue


def _out(n: int, finished: bool = False):
    return SimpleNamespace(request_id="r", finished=finished, n=n)


async def _consume(eng: AsyncLLMEngine, items: list, after_first: list = ()) -> tuple[list, object]:
    stream = _Stream(asyncio.get_running_loop())
    eng._streams["r"] = stream
    for it in items:
        stream.queue.put_nowait(it)
    seen, error = [], None
    try:
        async for out in eng._iterate("r", stream):
            seen.append(out.n)
            for it in after_first:
                stream.queue.put_nowait(it)
            after_first = ()
    except RuntimeError as e:
        error = e
    return seen, error


def test_queued_snapshots_collapse_to_the_newest():
    eng = _engine()
    seen, error = asyncio.run(_consume(eng, [_out(1), _out(2), _out(3)],
                                       after_first=[_out(4), _out(5, finished=True)]))
    assert seen == [3, 5] and error is None
    assert "r" not in eng._streams and eng._commands.empty()  # finished: nothing to abort


def test_an_error_comes_after_the_snapshots_queued_before_it():
    eng = _engine()
    seen, error = asyncio.run(_consume(eng, [_out(1), _out(2), RuntimeError("engine died"),
                                             _out(3)]))
    assert seen == [2] and str(error) == "engine died"
    assert eng._commands.get_nowait() == ("abort", "r")  # unfinished: its blocks are freed


def test_a_finished_output_is_never_skipped():
    eng = _engine()
    seen, _ = asyncio.run(_consume(eng, [_out(1), _out(2, finished=True)]))
    assert seen == [2]
    with pytest.raises(Exception):
        eng._commands.get_nowait()  # finished: no abort was queued
