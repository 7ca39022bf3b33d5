"""The mp executor on the CPU (gloo, fp32): TP=2 gives TP=1's greedy tokens on a tiny
random Llama (4 heads, 2 KV heads); no worker outlives shutdown, deletion or its parent;
a killed worker fails the next step with an error naming it."""

from __future__ import annotations

import gc
import glob
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from llmcore import LLM
from llmcore.executor import MultiprocExecutor, WorkerFailure

from pid_helpers import alive, wait_exited
from tiny_llama import CPU_ENGINE_ARGS, PROMPTS, cpu_llm, greedy_params, greedy_tokens


def _executor(llm: LLM) -> MultiprocExecutor:
    ex = llm.llm_engine.core.executor
    assert isinstance(ex, MultiprocExecutor)
    return ex


@pytest.fixture(scope="module")
def tp1_tokens(tiny_llama) -> list:
    return greedy_tokens(cpu_llm(tiny_llama, 1))


def test_tp2_greedy_tokens_equal_tp1_and_shutdown_stops_the_workers(tiny_llama, tp1_tokens):
    want = tp1_tokens
    llm = cpu_llm(tiny_llama, 2)
    ex = _executor(llm)
    pids = ex.worker_pids
    assert len(pids) == 2 and all(alive(p) for p in pids)
    assert greedy_tokens(llm) == want
    assert greedy_tokens(llm) == want   # the workers' sampling state was released and reused
    llm.llm_engine.core.shutdown()
    assert not any(alive(p) for p in pids)
    with pytest.raises(WorkerFailure, match="shut down"):
        greedy_tokens(llm)


def test_a_killed_worker_fails_the_next_step_and_deletion_stops_the_rest(tiny_llama):
    llm = cpu_llm(tiny_llama, 2)
    ex = _executor(llm)
    pids = ex.worker_pids
    os.kill(pids[1], signal.SIGKILL)
    with pytest.raises(WorkerFailure, match=rf"rank 1 died \(pid {pids[1]}, exit code -9\)"):
        greedy_tokens(llm)
    assert not any(alive(p) for p in pids)   # rank 0 (stuck in a collective) was stopped
    with pytest.raises(WorkerFailure, match="rank 1 died"):
        greedy_tokens(llm)                    # and the engine stays failed
    del llm, ex
    gc.collect()


def test_a_worker_that_raises_fails_the_engine_with_its_error(tiny_llama):
    llm = cpu_llm(tiny_llama, 2)
    ex = _executor(llm)
    pids = ex.worker_pids
    blocks = ex.collective_rpc("determine_num_blocks")
    assert len(blocks) == 2 and blocks[0] == blocks[1]    # every rank answers, in rank order
    with pytest.raises(WorkerFailure, match="rank 0 failed: AttributeError: .*no_such_method"):
        ex.collective_rpc("no_such_method")
    assert not any(alive(p) for p in pids)
    with pytest.raises(WorkerFailure, match="rank 0 failed"):
        greedy_tokens(llm)


def test_async_scheduling_and_deleting_the_llm_stops_its_workers(tiny_llama, tp1_tokens):
    # async: the core launches step k before reading step k-1's answer from the workers
    llm = cpu_llm(tiny_llama, 2, async_scheduling=True)
    assert llm.llm_engine.async_scheduling
    pids = _executor(llm).worker_pids
    assert greedy_tokens(llm) == tp1_tokens
    del llm
    gc.collect()
    assert not any(alive(p) for p in pids)


def test_workers_exit_when_their_parent_is_killed(tiny_llama):
    script = textwrap.dedent(f"""
        import sys
        from llmcore import LLM
        llm = LLM(model={tiny_llama!r}, tensor_parallel_size=2, skip_tokenizer_init=True,
                  device="cpu", dtype="float32", max_model_len=128, cpu_kv_cache_space=0.01)
        print(*llm.llm_engine.core.executor.worker_pids, flush=True)
        sys.stdin.read()   # until killed
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline()
        assert line, "the parent process failed to start its engine"
        pids = [int(x) for x in line.split()]
    finally:
        parent.kill()
        parent.wait()
    wait_exited(pids)
    assert not any(alive(p) for p in pids)


def test_bad_parallel_settings_fail_before_any_worker_starts(tiny_llama):
    with pytest.raises(ValueError, match="4 attention heads are not divisible by "
                                         "--tensor-parallel-size 3"):
        cpu_llm(tiny_llama, 3)
    with pytest.raises(ValueError, match="pipeline-parallel-size 3 exceeds the model's 2 layers"):
        cpu_llm(tiny_llama, 2, pp=3)


async def test_async_llm_runs_tp2_workers_under_its_engine_core_process(tiny_llama, tp1_tokens):
    # the engine core runs in its own (daemon) process, which starts the TP workers
    from llmcore.config import EngineArgs
    from llmcore.engine.async_llm import AsyncLLM

    engine = AsyncLLM(EngineArgs(model=tiny_llama, tensor_parallel_size=2, **CPU_ENGINE_ARGS,
                                 disable_log_stats=True))
    try:
        last = None
        async for out in engine.generate({"prompt_token_ids": PROMPTS[1]}, greedy_params(),
                                         request_id="r"):
            last = out
        assert list(last.outputs[0].token_ids) == tp1_tokens[1]
        core_pid = engine.client.core_pid
        workers = [int(pid) for f in glob.glob(f"/proc/{core_pid}/task/*/children")
                   for pid in open(f).read().split()]
        assert len(workers) == 2 and all(alive(p) for p in workers)
    finally:
        engine.shutdown()
    assert not any(alive(p) for p in workers)   # the core stopped its workers before exiting
