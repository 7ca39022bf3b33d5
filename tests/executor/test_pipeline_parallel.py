"""Pipeline (and tensor x pipeline) parallelism with the mp executor on the CPU (gloo,
fp32): a tiny random Llama of 3 layers (stages of 2 + 1 layers, 4 heads, 2 KV heads)
gives the single-process greedy tokens with PP=2 and TP=2 x PP=2 (two micro-batches in
flight; async scheduling is not used with them), also for a mix of many requests with an
abort, preemption and chunked prefill, and with one step at a time (async: the sampled
ids go back from the last stage to the first); --max-parallel-loading-workers sequences
the ranks' weight loading; no worker outlives deletion or a killed peer."""

from __future__ import annotations

import gc
import os
import signal
from typing import Optional

import pytest

from llmcore.executor import MultiprocExecutor, WorkerFailure
from llmcore.executor.base import loading_waves

from pid_helpers import alive
from tiny_llama import cpu_llm, greedy_tokens, save_tiny_llama

_MAX_TOKENS = 24


@pytest.fixture(scope="module")
def tiny_llama3(tmp_path_factory) -> str:
    return save_tiny_llama(str(tmp_path_factory.mktemp("tiny_llama_pp")), num_hidden_layers=3)


@pytest.fixture(scope="module")
def reference_tokens(tiny_llama3) -> list:
    return greedy_tokens(cpu_llm(tiny_llama3, 1, 1), _MAX_TOKENS)


@pytest.mark.parametrize("tp,pp,async_sched", [(1, 2, False), (1, 2, True), (2, 2, False),
                                               (2, 2, True)])
def test_pipeline_greedy_tokens_equal_one_process(tiny_llama3, reference_tokens, tp, pp,
                                                  async_sched):
    # the last case also loads one rank at a time
    one_at_a_time = (tp, pp, async_sched) == (2, 2, True)
    llm = cpu_llm(tiny_llama3, tp, pp, async_scheduling=async_sched,
               max_parallel_loading_workers=1 if one_at_a_time else None)
    ex = llm.llm_engine.core.executor
    assert isinstance(ex, MultiprocExecutor) and llm.llm_engine.async_scheduling == async_sched
    pids = ex.worker_pids
    assert len(pids) == tp * pp and all(alive(p) for p in pids)
    # each stage's KV cache holds only its layers (stage 0 two, stage 1 one): in the same
    # memory, stage 1 fits twice the blocks; the engine takes the minimum
    blocks = [b for b, _ in ex.collective_rpc("determine_num_blocks")]
    assert len(set(blocks[:tp])) == len(set(blocks[tp:])) == 1
    assert blocks[tp] in (2 * blocks[0], 2 * blocks[0] + 1), blocks
    assert greedy_tokens(llm, _MAX_TOKENS) == reference_tokens
    if one_at_a_time:
        spans = sorted(ex.load_intervals)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans   # no overlap
    if (tp, pp, async_sched) == (1, 2, False):
        # a killed stage-0 worker (not the rank that answers) fails the next step, and
        # stage 1, blocked in a recv from it, is stopped too
        os.kill(pids[0], signal.SIGKILL)
        with pytest.raises(WorkerFailure, match=rf"rank 0 died \(pid {pids[0]}, exit code -9\)"):
            greedy_tokens(llm, _MAX_TOKENS)
        assert not any(alive(p) for p in pids)
    del llm, ex
    gc.collect()
    assert not any(alive(p) for p in pids)


def test_pipeline_one_micro_batch_async_keeps_the_device_token_path(tiny_llama3,
                                                                      reference_tokens):
    # num_micro_batches = 1 (internal): one step at a time, as before micro-batches; with
    # async scheduling the last stage sends the sampled ids back to stage 0
    from llmcore.config import EngineArgs
    from llmcore.engine.core import EngineCore
    from llmcore.engine.core_types import EngineCoreRequest
    from tiny_llama import CPU_ENGINE_ARGS, PROMPTS, greedy_params

    cfg = EngineArgs(model=tiny_llama3, pipeline_parallel_size=2, async_scheduling=True,
                     **CPU_ENGINE_ARGS).create_engine_config()
    cfg.scheduler_config.num_micro_batches = 1
    core = EngineCore(cfg, eos_token_id=None)
    try:
        assert core._micro_batches is None
        params = greedy_params(_MAX_TOKENS)
        for i, p in enumerate(PROMPTS):
            core.add_request(EngineCoreRequest(str(i), p, params, _MAX_TOKENS, 0.0))
        tokens, pipelined = {str(i): [] for i in range(len(PROMPTS))}, 0
        while core.has_unfinished_requests():
            for o in core.step().outputs:
                tokens[o.request_id] += o.new_token_ids
            pipelined += core._inflight is not None
        assert [tokens[str(i)] for i in range(len(PROMPTS))] == reference_tokens
        assert pipelined > 0 and core.scheduler.num_in_flight() == 0
    finally:
        core.shutdown()


def test_loading_waves():
    assert loading_waves(4, None) == [[0, 1, 2, 3]]
    assert loading_waves(4, 1) == [[0], [1], [2], [3]]
    assert loading_waves(5, 2) == [[0, 1], [2, 3], [4]]
    assert loading_waves(2, 8) == [[0, 1]]


def test_bad_pipeline_settings_fail_before_any_worker_starts(tiny_llama3):
    with pytest.raises(ValueError, match="pipeline-parallel-size 4 exceeds the model's 3 layers"):
        cpu_llm(tiny_llama3, 1, 4)
    with pytest.raises(ValueError, match="max-parallel-loading-workers must be >= 1, got 0"):
        cpu_llm(tiny_llama3, 1, 2, max_parallel_loading_workers=0)
    from llmcore.config import EngineArgs
    cfg = EngineArgs(model=tiny_llama3, device="cpu", tensor_parallel_size=2,
                     skip_tokenizer_init=True).create_engine_config()
    cfg.model_config.hf_config.intermediate_size = 130 + 1
    with pytest.raises(ValueError, match="intermediate size 131 is not divisible by "
                                         "--tensor-parallel-size 2"):
        cfg.validate()


def _mixed_requests() -> list:
    """8 prompts of different lengths: greedy, one with n = 2 (seeded sampling), one with
    prompt logprobs."""
    from llmcore import SamplingParams
    out = []
    for i in range(8):
        prompt = list(range(3 + 11 * i, 3 + 11 * i + 5 + 9 * (i % 4)))
        kw = dict(temperature=0.0, max_tokens=10 + 2 * (i % 5), ignore_eos=True)
        if i == 2:
            kw.update(temperature=1.0, seed=3, n=2)
        if i == 5:
            kw.update(prompt_logprobs=1)
        out.append((str(i), prompt, SamplingParams(**kw)))
    return out


def _run_mixed(llm, abort: Optional[str] = None) -> dict:
    """request id -> (token ids of each sample, prompt logprob keys); `abort` is aborted at
    the first step end where one of its sequences is in a micro-batch in flight."""
    eng = llm.llm_engine
    for rid, prompt, params in _mixed_requests():
        req = eng.make_request(rid, {"prompt_token_ids": prompt}, params)
        req.stream_outputs = False
        eng.add_processed_request(req)
    core, final, steps = eng.core, {}, 0
    while eng.has_unfinished_requests():
        for out in eng.step():
            if out.finished:
                pl = [None if p is None else sorted(p) for p in (out.prompt_logprobs or [])]
                final[out.request_id] = ([list(c.token_ids) for c in out.outputs], pl)
        steps += 1
        req = core.requests.get(abort) if abort is not None and steps >= 2 else None
        if req is not None and any(core.scheduler.is_in_flight(s.seq_id) for s in req.seqs):
            eng.abort_request(abort)
            final["aborted in flight"] = True
        assert steps < 400
    return final


def test_pipeline_micro_batches_many_requests(tiny_llama3):
    # a small KV pool: preemption (recompute) too; chunked prefill with small chunks
    kw = dict(num_gpu_blocks_override=14, block_size=8, enable_chunked_prefill=True,
              max_num_batched_tokens=32)
    ref_llm = cpu_llm(tiny_llama3, 1, 1, **kw)
    ref = _run_mixed(ref_llm)
    del ref_llm
    llm = cpu_llm(tiny_llama3, 1, 2, **kw)
    core = llm.llm_engine.core
    ex = core.executor
    assert core.scheduler.config.num_micro_batches == 2
    launch, most = ex.execute_model, []

    def counting(step):
        out = launch(step)
        most.append(len(ex._unread))
        return out

    ex.execute_model = counting
    got = _run_mixed(llm, abort="6")
    del ex.execute_model, counting, launch   # (they hold the executor)
    assert got.pop("aborted in flight") and "6" not in got
    ref.pop("6")
    assert got == ref
    assert len(got["2"][0]) == 2 and got["2"][0][0] != got["2"][0][1]
    assert max(most) == 2                          # two micro-batches were out at once
    assert core.scheduler.num_preemptions() > 0
    s = core.scheduler
    assert s.num_in_flight() == 0 and not s.has_unfinished()
    assert s.num_free_device_blocks() == core.num_device_blocks   # no leaked block
    s.check_invariants()
    pids = ex.worker_pids
    del llm, core, ex, s
    gc.collect()
    assert not any(alive(p) for p in pids)
