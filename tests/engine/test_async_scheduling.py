"""Async scheduling (pipelined steps: step k is launched before step k-1's tokens reach the
host) gives exactly the outputs of the synchronous engine, and frees every block.

Runs on the CPU by forcing `async_scheduling=True` (its default is on for CUDA only): the
bookkeeping (placeholder tokens, on-device input fix-up, late stops, length stops, aborts,
preemption) is the same on every device.
"""

from __future__ import annotations

import numpy as np
import pytest

from llmcore import LLM, SamplingParams
from test_engine import PROMPTS, _mixed_prompts, assert_engine_idle


def _params(n: int) -> list:
    """A mix that exercises every stop path and sampler state the pipeline must keep right."""
    ps = []
    for i in range(n):
        kind = i % 8
        if kind == 0:
            ps.append(SamplingParams(temperature=0.0, max_tokens=1 + i))
        elif kind == 1:
            ps.append(SamplingParams(temperature=0.0, max_tokens=48, stop=["\n", "."]))
        elif kind == 2:
            ps.append(SamplingParams(temperature=0.9, seed=i, max_tokens=24, logprobs=3))
        elif kind == 3:
            ps.append(SamplingParams(temperature=0.0, max_tokens=30, repetition_penalty=1.3,
                                     frequency_penalty=0.5, min_tokens=6))
        elif kind == 4:
            ps.append(SamplingParams(temperature=0.0, max_tokens=64))  # EOS may stop it
        elif kind == 5:
            ps.append(SamplingParams(temperature=0.7, top_k=20, top_p=0.9, seed=i, max_tokens=20,
                                     stop_token_ids=[13, 28]))
        elif kind == 6:
            ps.append(SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True,
                                     include_stop_str_in_output=True, stop=[" the"]))
        else:
            ps.append(SamplingParams(temperature=0.0, max_tokens=12, logit_bias={28: 5.0}))
    return ps


def _summary(outs) -> list:
    return [(o.outputs[0].text, list(o.outputs[0].token_ids), o.outputs[0].finish_reason,
             o.outputs[0].stop_reason,
             o.outputs[0].cumulative_logprob,
             None if o.outputs[0].logprobs is None else
             [sorted(d) for d in o.outputs[0].logprobs]) for o in outs]


@pytest.fixture(scope="module")
def prompts():
    # shared prefixes (the prefix cache has something to hit) and repeats
    shared = "Background: " + " ".join(f"fact {i} is about topic {i % 5}." for i in range(12))
    return PROMPTS + _mixed_prompts(8) + [shared + " Question one:", shared + " Question two:", shared]


@pytest.fixture(scope="module")
def sync_reference(prompts):
    llm = LLM(max_model_len=1024, cpu_kv_cache_space=0.25, seed=0, async_scheduling=False)
    out = _summary(llm.generate(prompts, _params(len(prompts)), use_tqdm=False))
    assert_engine_idle(llm)
    return out


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(enable_chunked_prefill=True, max_num_batched_tokens=32),
    dict(num_gpu_blocks_override=24, preemption_mode="recompute"),
    dict(num_gpu_blocks_override=24, preemption_mode="swap", swap_space=0.05),
    dict(max_num_seqs=3),
    dict(enable_prefix_caching=True, num_gpu_blocks_override=40, preemption_mode="recompute"),
], ids=["default", "chunked", "recompute", "swap", "few-seqs", "prefix-caching"])
def test_same_outputs_as_sync_engine(prompts, sync_reference, kwargs):
    llm = LLM(max_model_len=1024, cpu_kv_cache_space=0.25, seed=0, async_scheduling=True, **kwargs)
    assert llm.llm_engine.async_scheduling
    got = _summary(llm.generate(prompts, _params(len(prompts)), use_tqdm=False))
    for i, (a, b) in enumerate(zip(sync_reference, got)):
        # tokens, text, stops exact; logprobs to float noise (batches differ by the rows of
        # sequences that stopped one step late)
        assert a[:4] == b[:4] and a[5] == b[5], f"prompt {i}: {a[:3]} != {b[:3]}"
        assert (a[4] is None) == (b[4] is None)
        if a[4] is not None:
            assert a[4] == pytest.approx(b[4], abs=1e-3)
    assert llm.llm_engine._inflight is None
    if kwargs.get("enable_prefix_caching"):
        assert llm.llm_engine.scheduler.prefix_cache_hit_rate() > 0
    assert_engine_idle(llm)


@pytest.fixture(scope="module")
def async_llm():
    llm = LLM(max_model_len=96, cpu_kv_cache_space=0.25, seed=0, async_scheduling=True)
    yield llm
    assert_engine_idle(llm)


def test_abort_while_a_step_is_in_flight(async_llm):
    eng = async_llm.llm_engine
    for i in range(4):
        eng.add_request(f"a{i}", PROMPTS[i], SamplingParams(temperature=0.0, max_tokens=40,
                                                            ignore_eos=True))
    for _ in range(3):
        eng.step()
    assert eng._inflight is not None
    eng.abort_request(["a1", "a2"])
    done = {}
    while eng.has_unfinished_requests():
        for o in eng.step():
            if o.finished:
                done[o.request_id] = o
    assert sorted(done) == ["a0", "a3"]
    assert all(len(o.outputs[0].token_ids) == 40 for o in done.values())
    ref = async_llm.generate([PROMPTS[0]], SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True),
                             use_tqdm=False)[0]
    assert done["a0"].outputs[0].token_ids == ref.outputs[0].token_ids
    eng.step()  # a late in-flight step with only aborted rows is drained safely
    assert eng.scheduler.device_usage() == 0.0


def test_max_model_len_stops_by_length(async_llm):
    tok = async_llm.get_tokenizer()
    prompt = tok.encode("word " * 80)[:90]
    out = async_llm.generate([{"prompt_token_ids": prompt}],
                             SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True),
                             use_tqdm=False)[0]
    assert out.outputs[0].finish_reason == "length"
    assert len(prompt) + len(out.outputs[0].token_ids) == 96


def test_n_and_beams_stay_pipelined(async_llm):
    """n > 1 and beam search (above the core: its steps are ordinary requests) mixed into a
    running batch keep the engine in pipelined steps; outputs match a synchronous engine."""
    eng = async_llm.llm_engine
    eng.add_request("g", PROMPTS[0], SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True))
    eng.step()
    eng.step()
    assert eng._inflight is not None
    eng.add_request("n2", PROMPTS[1], SamplingParams(temperature=0.8, n=2, seed=1, max_tokens=10))
    eng.add_request("beam", PROMPTS[2], SamplingParams(n=2, use_beam_search=True, temperature=0.0,
                                                        max_tokens=8))
    done = {}
    while eng.has_unfinished_requests():
        for o in eng.step():
            if o.finished:
                done[o.request_id] = o
        assert eng._num_unpipelinable == 0
    assert sorted(done) == ["beam", "g", "n2"]
    assert eng._num_unpipelinable == 0
    sync = LLM(max_model_len=96, cpu_kv_cache_space=0.25, seed=0, async_scheduling=False)
    ref = sync.generate([PROMPTS[0], PROMPTS[1]],
                        [SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True),
                         SamplingParams(temperature=0.8, n=2, seed=1, max_tokens=10)], use_tqdm=False)
    assert done["g"].outputs[0].token_ids == ref[0].outputs[0].token_ids
    assert [c.token_ids for c in done["n2"].outputs] == [c.token_ids for c in ref[1].outputs]


def test_random_workload_leaves_engine_clean(async_llm):
    rng = np.random.default_rng(1)
    vocab = async_llm.llm_engine.model_info.vocab_size
    prompts = [rng.integers(100, vocab, size=int(rng.integers(1, 60))).tolist() for _ in range(30)]
    params = [SamplingParams(temperature=float(rng.choice([0.0, 1.0])), max_tokens=int(rng.integers(1, 30)),
                             seed=int(rng.integers(0, 5)), ignore_eos=bool(rng.integers(0, 2)))
              for _ in prompts]
    outs = async_llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    for o, p in zip(outs, params):
        assert 1 <= len(o.outputs[0].token_ids) <= p.max_tokens
