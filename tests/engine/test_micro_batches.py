"""Pipeline-parallel micro-batches in the engine core (engine/micro_batches.py).

With an in-process executor that records its calls and "samples" a token that depends only
on the sequence (so any batching gives the same tokens): with M = 2 two micro-batches of
disjoint sequences are launched before the first is read, and many requests (n = 2,
prompt logprobs, an abort, preemption by recompute and by swap) end with the tokens of
one step at a time and every block free. End to end, the mp executor with PP = 2 (gloo) on
a tiny random Llama gives the greedy tokens of PP = 1, also for that mix."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from llmcore.config import EngineArgs
from llmcore.engine.core import EngineCore
from llmcore.engine.core_types import EngineCoreRequest
from llmcore.engine.micro_batches import LaunchedStep, MicroBatchQueue
from llmcore.executor.base import Executor
from llmcore.model_runner.step_io import ModelRunnerOutput
from llmcore.sampling_params import SamplingParams

from tiny_llama import save_tiny_llama


@pytest.fixture(scope="module")
def tiny_llama3(tmp_path_factory) -> str:
    return save_tiny_llama(str(tmp_path_factory.mktemp("tiny_llama_mb")), num_hidden_layers=3)


class _Pending:
    def __init__(self, executor: "RecordingExecutor", k: int, out: ModelRunnerOutput):
        self._executor, self._k, self._out = executor, k, out

    def get(self) -> ModelRunnerOutput:
        self._executor.on_get(self._k)
        return self._out


class RecordingExecutor(Executor):
    """Answers at once; token of a sampled row = f(its input token, its position): a
    "model" whose tokens depend on the sequence only. Records ("launch", k, seq ids) and
    ("get", k); fails a step that holds a sequence of a step not read yet."""

    num_blocks = 64
    num_cpu_blocks = 0

    def _init_executor(self) -> None:
        self.calls: list = []
        self.out: dict = {}            # launch index -> seq ids, until read
        self.max_out = 0

    def collective_rpc(self, method, args=(), kwargs=None):
        if method == "determine_num_blocks":
            return [(self.num_blocks, self.num_cpu_blocks)]
        return [None]

    def execute_model(self, step):
        plan = step.plan
        k = len([c for c in self.calls if c[0] == "launch"])
        ids = [int(x) for x in np.asarray(plan.seq_ids)]
        self.calls.append(("launch", k, ids))
        for other, held in self.out.items():
            assert not set(ids) & set(held), f"step {k} holds sequences of step {other}"
        if ids:
            self.out[k] = ids
            self.max_out = max(self.max_out, len(self.out))
        rows = np.asarray(step.sample_rows if step.sample_rows is not None else [], np.int64)
        inputs = np.asarray(plan.input_ids)[rows]
        pos = np.asarray(plan.positions)[rows]
        tokens = ((31 * inputs + 7 * pos) % 200 + 20).tolist()
        prompt = []
        for job in step.prompt_logprob_jobs:
            n = job.last - job.first
            prompt.append(([-1.0] * n, [[t] for t in job.targets], [[-1.0]] * n, [1] * n))
        return _Pending(self, k, ModelRunnerOutput(sampled_token_ids=tokens,
                                                   logprobs=[-0.5] * len(tokens),
                                                   prompt_logprobs=prompt))

    def on_get(self, k: int) -> None:
        self.calls.append(("get", k))
        assert min(self.out) == k, f"step {k} read before step {min(self.out)}"
        del self.out[k]


def _core(folder: str, pp: int = 2, micro_batches=None, blocks: int = 64, cpu_blocks: int = 0,
          preemption_mode: str = "recompute", **kw) -> EngineCore:
    config = EngineArgs(model=folder, device="cpu", dtype="float32", skip_tokenizer_init=True,
                        pipeline_parallel_size=pp, max_model_len=128, block_size=8,
                        max_num_seqs=kw.pop("max_num_seqs", 8), **kw).create_engine_config()
    config.scheduler_config.num_micro_batches = micro_batches
    config.scheduler_config.preemption_mode = preemption_mode
    ex = type("Ex", (RecordingExecutor,), {"num_blocks": blocks, "num_cpu_blocks": cpu_blocks})
    return EngineCore(config, eos_token_id=None, executor_class=ex)


def _request(rid: str, prompt, max_tokens: int = 6, **params) -> EngineCoreRequest:
    params = {"temperature": 0.0, **params}
    p = SamplingParams(max_tokens=max_tokens, ignore_eos=True, **params)
    return EngineCoreRequest(rid, list(prompt), p, max_tokens, 0.0)


def _run(core: EngineCore, requests: list, abort: tuple = ()) -> dict:
    """(request id, index) -> tokens (and request id -> prompt-logprob targets). abort:
    (n, request id): aborted after n steps, at the first step end where its sequence is in
    a micro-batch in flight."""
    for r in requests:
        core.add_request(r)
    got: dict = collections.defaultdict(list)
    steps = 0
    while core.has_unfinished_requests():
        for o in core.step().outputs:
            got[(o.request_id, o.index)] += o.new_token_ids
            if o.prompt_logprobs is not None:   # position -> target, each sent once (also
                # when a preemption by recompute restarts a chunked prefill)
                pl = got.setdefault(o.request_id, {})
                for i, t in enumerate(o.prompt_logprobs.token_ids):
                    assert o.prompt_logprobs_start + i not in pl, "a prompt position sent twice"
                    pl[o.prompt_logprobs_start + i] = t
        steps += 1
        req = core.requests.get(abort[1]) if abort and steps >= abort[0] else None
        if req is not None and any(core.scheduler.is_in_flight(s.seq_id) for s in req.seqs):
            core.abort_requests([abort[1]])
            got["aborted in flight"] = True
        assert steps < 500
    return dict(got)


def _prompts(n: int) -> list:
    return [list(range(3 + 5 * i, 3 + 5 * i + 4 + 7 * (i % 4))) for i in range(n)]


def test_queue_is_a_bounded_fifo():
    q = MicroBatchQueue(2)
    a, b = LaunchedStep(None, []), LaunchedStep(None, [])
    q.push(a)
    q.push(b)
    assert q.full and len(q) == 2
    with pytest.raises(RuntimeError, match="2 micro-batches are in flight"):
        q.push(a)
    assert q.pop_oldest() is a and q.pop_oldest() is b and not q
    with pytest.raises(ValueError):
        MicroBatchQueue(1)


def test_two_disjoint_micro_batches_launched_before_the_first_is_read(tiny_llama3):
    core = _core(tiny_llama3)
    assert core.scheduler.config.num_micro_batches == 2
    for i, p in enumerate(_prompts(4)):
        core.add_request(_request(str(i), p))
    first = core.step()
    calls = core.executor.calls
    assert [c[:2] for c in calls] == [("launch", 0), ("launch", 1), ("get", 0)]
    a, b = calls[0][2], calls[1][2]
    assert len(a) == len(b) == 2 and not set(a) & set(b)   # balanced, disjoint
    assert {o.request_id for o in first.outputs} == {core._seqs[s][0].request_id for s in a}
    assert core.scheduler.num_in_flight() == 2             # b's sequences
    core.step()   # a's sequences run again while b is read
    assert [c[:2] for c in calls[3:]] == [("launch", 2), ("get", 1)]
    assert calls[3][2] == a


def test_one_micro_batch_forced_is_one_step_at_a_time(tiny_llama3):
    core = _core(tiny_llama3, micro_batches=1)
    assert core._micro_batches is None and core.scheduler.config.num_micro_batches == 1
    for i, p in enumerate(_prompts(4)):
        core.add_request(_request(str(i), p))
    core.step()
    core.step()
    assert [c[:2] for c in core.executor.calls] == [("launch", 0), ("get", 0), ("launch", 1),
                                                   ("get", 1)]
    assert len(core.executor.calls[0][2]) == 4 and core.scheduler.num_in_flight() == 0


def _mix() -> list:
    prompts = _prompts(8)
    reqs = [_request(str(i), p, max_tokens=10 + 3 * (i % 3)) for i, p in enumerate(prompts)]
    reqs[2] = _request("2", prompts[2], max_tokens=12, n=2, temperature=1.0, seed=3)
    reqs[5] = _request("5", prompts[5], max_tokens=9, prompt_logprobs=1)
    return reqs


@pytest.mark.parametrize("micro_batches", [2, 3])
@pytest.mark.parametrize("mode", ["plenty", "recompute", "swap", "chunked"])
def test_many_requests_same_tokens_as_one_step_at_a_time_and_no_leak(tiny_llama3, mode,
                                                                     micro_batches):
    kw = {"plenty": {}, "recompute": dict(blocks=14), "swap": dict(blocks=14, cpu_blocks=32),
          "chunked": dict(blocks=14, enable_chunked_prefill=True, max_num_batched_tokens=16)
          }[mode]
    if mode == "swap":
        kw["preemption_mode"] = "swap"
    ref = _run(_core(tiny_llama3, micro_batches=1, **kw), _mix())
    core = _core(tiny_llama3, pp=micro_batches, **kw)
    got = _run(core, _mix(), abort=(3, "6"))
    assert got.pop("aborted in flight")
    cut, full = got.pop(("6", 0), []), ref.pop(("6", 0))
    assert len(cut) < len(full) and cut == full[:len(cut)]
    assert got == ref
    assert got[("2", 0)] == got[("2", 1)] and len(got[("2", 1)]) == 12
    assert got["5"] == dict(enumerate(_prompts(8)[5][1:], start=1))
    assert core.executor.max_out == micro_batches
    if mode != "plenty":
        assert core.scheduler.num_preemptions() > 0
    s = core.scheduler
    assert s.num_in_flight() == 0 and not s.has_unfinished()
    assert s.num_free_device_blocks() == core.num_device_blocks
    assert s.num_free_cpu_blocks() == core.num_cpu_blocks
    s.check_invariants()
