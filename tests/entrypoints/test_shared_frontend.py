"""The code the HTTP and gRPC front ends share (stream_deltas.py, request_validation.py,
lifecycle.py), and the start-up modules' import order."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from types import SimpleNamespace

import pytest

from llmcore.entrypoints.lifecycle import (ENGINE_DEAD, SHUTTING_DOWN, RequestTerminated,
                                           ServerLifecycle)
from llmcore.entrypoints.request_validation import (BAD_VALUE, UNSUPPORTED, WRONG_TYPE,
                                                    InvalidField, first_out_of_vocab,
                                                    make_sampling_params, streaming_conflict)
from llmcore.entrypoints.stream_deltas import StreamDeltas


def _out(text, ids, finish=None, logprobs=None):
    return SimpleNamespace(text=text, token_ids=ids, finish_reason=finish, logprobs=logprobs)


def test_stream_deltas_send_only_what_is_new():
    d = StreamDeltas()
    a = d.advance(0, _out("He", [1, 2], logprobs=[{1: -1}, {2: -2}]))
    assert (a.text, a.token_ids, a.logprobs, a.first, a.finished) == \
        ("He", [1, 2], [{1: -1}, {2: -2}], True, False)
    b = d.advance(0, _out("Hello", [1, 2, 3], "length", [{1: -1}, {2: -2}, {3: -3}]))
    assert (b.text, b.token_ids, b.logprobs, b.first, b.finished) == \
        ("llo", [3], [{3: -3}], False, True)
    assert d.advance(0, _out("Hello", [1, 2, 3], "length")) is None  # finished: nothing more
    assert d.advance(1, _out("x", [9])).first and d.completion_tokens == 4


def test_make_sampling_params_errors_name_their_kind():
    assert make_sampling_params({"n": 2, "best_of": 3}).best_of == 3
    with pytest.raises(InvalidField) as e:
        make_sampling_params({"temperature": -1.0})
    assert e.value.kind == BAD_VALUE and e.value.message.startswith("temperature")
    with pytest.raises(InvalidField) as e:
        make_sampling_params({"no_such_field": 1})
    assert e.value.kind in (UNSUPPORTED, WRONG_TYPE) and "no_such_field" in e.value.message


def test_streaming_conflict_and_vocab():
    assert streaming_conflict(1, None, False) is None
    assert streaming_conflict(2, 2, False) is None
    assert streaming_conflict(1, 3, False) == "best_of"
    assert streaming_conflict(1, 3, True) == "use_beam_search"
    assert first_out_of_vocab([0, 5, 10, -1], 10) == 2
    assert first_out_of_vocab([-1], 10) == 0 and first_out_of_vocab([99], 0) is None


class _Engine:
    errored = False

    def __init__(self):
        self.died = None

    async def wait_for_death(self):
        self.died = asyncio.get_running_loop().create_future()
        return await self.died


async def _hang():
    yield 1
    await asyncio.Event().wait()  # an engine that never produces again
    yield 2  # pragma: no cover


def test_lifecycle_refuses_while_draining_and_counts_in_flight():
    async def main():
        lc = ServerLifecycle(_Engine())
        with lc.admitted():
            assert lc.num_active == 1 and not await lc.wait_idle(0)
            lc.begin_drain()
            with pytest.raises(RequestTerminated) as e, lc.admitted():
                pass
            assert e.value.reason == SHUTTING_DOWN
        assert lc.num_active == 0 and await lc.wait_idle(0)

    asyncio.run(main())


def test_lifecycle_ends_tracked_generations_when_the_engine_dies():
    async def main():
        engine = _Engine()
        lc = ServerLifecycle(engine)
        lc.start()
        gen = lc.track(_hang())
        assert await gen.__anext__() == 1
        pending = asyncio.ensure_future(gen.__anext__())
        await asyncio.sleep(0)
        while engine.died is None:
            await asyncio.sleep(0)
        engine.died.set_result(RuntimeError("boom"))
        with pytest.raises(RequestTerminated) as e:
            await pending
        assert e.value.reason == ENGINE_DEAD and "boom" in e.value.message
        assert isinstance(await lc.wait_for_engine_death(), RuntimeError)
        assert lc.refusal().reason == ENGINE_DEAD
        lc.close()

    asyncio.run(main())


def test_cli_does_not_import_the_api_server_module():
    code = ("import sys, llmcore.entrypoints.cli, llmcore.entrypoints.server_runner; "
            "assert 'llmcore.entrypoints.openai.api_server' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
