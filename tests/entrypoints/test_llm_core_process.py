"""LLM(engine_core_process=True): the offline API with its engine core in its own process
(the servers' IPC path). Same outputs as the in-process core; aborts, shutdown and a
killed core behave."""

from __future__ import annotations

import os
import signal

import pytest

from llmcore import LLM, SamplingParams
from llmcore.engine.core_client import EngineDeadError
from llmcore.engine.core_types import SchedulerStats

ARGS = dict(max_model_len=256, cpu_kv_cache_space=0.1, seed=0, disable_log_stats=True)
PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "def fibonacci(n):", "Once upon a time"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=8, logprobs=2)
FORKED = SamplingParams(temperature=0.8, seed=7, n=2, max_tokens=6, prompt_logprobs=1)


def _texts(outs):
    return [[c.text for c in o.outputs] for o in outs]


@pytest.fixture(scope="module")
def in_process():
    llm = LLM(**ARGS)
    yield llm
    llm.llm_engine.shutdown()


@pytest.fixture(scope="module")
def core_process():
    llm = LLM(engine_core_process=True, **ARGS)
    yield llm
    pid = llm.llm_engine.client.core_pid
    llm.llm_engine.shutdown()   # ends (and joins) the core process
    assert llm.llm_engine.client.exit_code == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_same_outputs_as_in_process(in_process, core_process):
    ref = in_process.generate(PROMPTS, GREEDY, use_tqdm=False)
    got = core_process.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert _texts(got) == _texts(ref)
    assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in ref]
    for a, b in zip(got, ref):
        assert a.outputs[0].logprobs[0].keys() == b.outputs[0].logprobs[0].keys()
    # seeded n=2 with prompt logprobs: same forks, same prompt logprobs
    ref2 = in_process.generate(PROMPTS[:2], FORKED, use_tqdm=False)
    got2 = core_process.generate(PROMPTS[:2], FORKED, use_tqdm=False)
    assert _texts(got2) == _texts(ref2)
    assert [len(o.prompt_logprobs) for o in got2] == [len(o.prompt_logprobs) for o in ref2]


def test_no_local_core_views(core_process):
    engine = core_process.llm_engine
    assert engine.core is None and engine.num_device_blocks > 0
    with pytest.raises(RuntimeError, match="own process"):
        engine.scheduler


def test_abort_frees_blocks(core_process):
    engine = core_process.llm_engine
    long = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
    engine.add_request("a", PROMPTS[0], long)
    engine.add_request("b", PROMPTS[1], long)
    # step until both have produced a token, then abort one and finish the other
    seen = set()
    while seen != {"a", "b"}:
        seen.update(o.request_id for o in engine.step())
    engine.abort_request("a")
    engine.abort_request("b")
    assert not engine.has_unfinished_requests()
    # the core takes messages in order: a utility call after the aborts sees their effect
    stats = engine.client.call_utility("get_stats", result_type=SchedulerStats)
    assert stats.num_total_blocks > 0 and stats.num_free_blocks == stats.num_total_blocks
    assert engine.get_num_unfinished_requests() == 0
    out = core_process.generate(PROMPTS[:1], SamplingParams(temperature=0.0, max_tokens=4),
                                use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4


def test_killed_core_fails_the_call():
    llm = LLM(engine_core_process=True, **ARGS)
    engine = llm.llm_engine
    pid = engine.client.core_pid
    engine.add_request("x", PROMPTS[0], SamplingParams(max_tokens=200, ignore_eos=True))
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(EngineDeadError):
        while engine.has_unfinished_requests():
            engine.step()
    engine.shutdown()
