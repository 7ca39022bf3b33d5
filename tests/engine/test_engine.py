"""End-to-end engine behaviour on the default model (SmolLM2-135M, CPU, fp32)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmcore import LLM, SamplingParams

PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea:",
    "1, 2, 3, 4,",
    "Once upon a time, in a small village near the mountains, there lived",
    "def fibonacci(n):",
    "The three primary colors are",
    "Translate to French: Good morning, how are you?",
    "Q: What is the boiling point of water at sea level?\nA:",
]


def _mixed_prompts(n: int) -> list:
    words = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
             "sigma tau upsilon phi chi psi omega").split()
    out = []
    for i in range(n):
        k = 3 + (i * 7) % 40
        out.append(f"Item {i}: " + " ".join(words[(i + j) % len(words)] for j in range(k)))
    return out


GREEDY = SamplingParams(temperature=0.0, max_tokens=16)


def texts(outs) -> list:
    return [o.outputs[0].text for o in outs]


def assert_engine_idle(llm: LLM) -> None:
    eng = llm.llm_engine
    assert not eng.has_unfinished_requests()
    s = eng.scheduler
    assert s.device_usage() == 0.0, "KV blocks leaked"
    assert s.num_free_device_blocks() == s.num_device_blocks()
    assert s.num_free_cpu_blocks() == s.num_cpu_blocks()
    s.check_invariants()


@pytest.fixture(scope="module")
def llm():
    engine = LLM(max_model_len=1024, cpu_kv_cache_space=0.25, seed=0)
    yield engine
    assert_engine_idle(engine)


@pytest.fixture(autouse=True)
def _idle_after(request):
    yield
    if "llm" in request.fixturenames:
        assert_engine_idle(request.getfixturevalue("llm"))


@pytest.fixture(scope="module")
def reference(llm):
    """Greedy text of each prompt generated alone."""
    prompts = PROMPTS + _mixed_prompts(24)
    return {p: llm.generate(p, GREEDY, use_tqdm=False)[0].outputs[0].text for p in prompts}


def test_generate_shapes(llm):
    outs = llm.generate(PROMPTS[:2], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
    assert [o.prompt for o in outs] == PROMPTS[:2]
    for o in outs:
        c = o.outputs[0]
        assert o.finished and len(c.token_ids) == 8 and c.finish_reason == "length"
        assert c.text == llm.get_tokenizer().decode(c.token_ids, skip_special_tokens=True)
        assert o.prompt_token_ids == llm.get_tokenizer().encode(o.prompt)


def test_prompt_forms(llm):
    ids = llm.get_tokenizer().encode(PROMPTS[0])
    a = llm.generate(PROMPTS[0], GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    b = llm.generate([ids], GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    c = llm.generate({"prompt_token_ids": ids}, GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    d = llm.generate({"prompt": PROMPTS[0]}, GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    assert list(a) == list(b) == list(c) == list(d)


def test_batch_invariance(llm, reference):
    prompts = list(reference)
    assert len(prompts) == 32
    batch = llm.generate(prompts, GREEDY, use_tqdm=False)
    assert texts(batch) == [reference[p] for p in prompts]


@pytest.mark.parametrize("kwargs", [
    dict(enable_prefix_caching=True),
    dict(enable_chunked_prefill=True, max_num_batched_tokens=64),
    dict(num_gpu_blocks_override=24, preemption_mode="recompute"),
    dict(num_gpu_blocks_override=24, preemption_mode="swap", swap_space=0.05),
    dict(enable_prefix_caching=True, enable_chunked_prefill=True, max_num_batched_tokens=32,
         block_size=8),
], ids=["prefix", "chunked", "preempt-recompute", "preempt-swap", "prefix+chunked+bs8"])
def test_same_text_under_engine_modes(reference, kwargs):
    llm = LLM(max_model_len=1024, cpu_kv_cache_space=0.25, **kwargs)
    prompts = list(reference)
    # Shared prefixes exercise prefix caching; run twice so the second pass hits the cache.
    for _ in range(2):
        outs = llm.generate(prompts, GREEDY, use_tqdm=False)
        assert texts(outs) == [reference[p] for p in prompts]
        assert_engine_idle(llm)
    sched = llm.llm_engine.scheduler
    if kwargs.get("enable_prefix_caching"):
        assert sched.prefix_cache_hit_rate() > 0.3
    if "num_gpu_blocks_override" in kwargs:
        assert sched.num_preemptions() > 0, "the tiny pool should have forced preemption"


def test_n_shares_prompt_blocks(llm):
    eng = llm.llm_engine
    bs = eng.args.block_size
    prompt = list(range(1000, 1000 + 4 * bs))  # exactly 4 full blocks
    eng.add_request("n4", {"prompt_token_ids": prompt},
                    SamplingParams(n=4, temperature=1.0, seed=1, max_tokens=8))
    eng.step()  # prefill + fork
    eng.step()  # each child writes its own first decode block
    used = eng.scheduler.num_device_blocks() - eng.scheduler.num_free_device_blocks()
    assert used == 4 + 4, f"prompt blocks should be shared by the 4 samples, {used} blocks in use"
    outs = []
    while eng.has_unfinished_requests():
        outs += eng.step()
    final = [o for o in outs if o.finished][-1]
    assert len(final.outputs) == 4
    assert all(len(c.token_ids) == 8 for c in final.outputs)
    assert len({tuple(c.token_ids) for c in final.outputs}) > 1


def test_best_of_returns_most_likely(llm):
    out = llm.generate(PROMPTS[0], SamplingParams(n=2, best_of=4, temperature=1.0, seed=3,
                                                  max_tokens=6, logprobs=0), use_tqdm=False)[0]
    assert len(out.outputs) == 2
    assert out.outputs[0].cumulative_logprob >= out.outputs[1].cumulative_logprob


def test_beam_search_is_deterministic_and_frees_blocks(llm):
    params = SamplingParams(n=2, best_of=3, use_beam_search=True, temperature=0.0, max_tokens=8)
    a = llm.generate(PROMPTS[:2], params, use_tqdm=False)
    b = llm.generate(PROMPTS[:2], params, use_tqdm=False)
    assert [[c.token_ids for c in o.outputs] for o in a] == [[c.token_ids for c in o.outputs] for o in b]
    for o in a:
        assert len(o.outputs) == 2
        assert o.outputs[0].cumulative_logprob >= o.outputs[1].cumulative_logprob - 1e-6
    eng = llm.llm_engine
    bs = eng.args.block_size
    eng.add_request("beam", {"prompt_token_ids": list(range(2000, 2000 + 4 * bs))},
                    SamplingParams(n=1, best_of=3, use_beam_search=True, temperature=0, max_tokens=4,
                                   ignore_eos=True))
    # beam search runs above the core: each step is one request per beam (prompt + its
    # tokens), sharing blocks only through prefix caching (tests/engine/test_beam_driver.py)
    for _ in range(3):
        eng.step()
        used = eng.scheduler.num_device_blocks() - eng.scheduler.num_free_device_blocks()
        assert used <= 3 * (4 + 1), f"{used} blocks in use by 3 beams of 4 blocks"
    while eng.has_unfinished_requests():
        eng.step()
    assert eng.scheduler.num_free_device_blocks() == eng.scheduler.num_device_blocks()


def test_seeded_sampling_reproducible_regardless_of_batch(llm):
    p = SamplingParams(temperature=0.9, top_p=0.9, top_k=50, seed=1234, max_tokens=12)
    alone = llm.generate(PROMPTS[3], p, use_tqdm=False)[0].outputs[0].token_ids
    others = [SamplingParams(temperature=1.0, max_tokens=12)] * 5
    batch = llm.generate(PROMPTS[:3] + [PROMPTS[3]] + PROMPTS[4:6], others[:3] + [p] + others[3:5],
                         use_tqdm=False)
    assert list(batch[3].outputs[0].token_ids) == list(alone)


def test_stop_strings_and_tokens(llm, reference):
    full = reference[PROMPTS[2]]
    assert len(full) > 4
    stop = full[2:4]
    out = llm.generate(PROMPTS[2], SamplingParams(temperature=0, max_tokens=16, stop=[stop]),
                       use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == full[:full.index(stop)]
    out = llm.generate(PROMPTS[2], SamplingParams(temperature=0, max_tokens=16, stop=[stop],
                                                  include_stop_str_in_output=True),
                       use_tqdm=False)[0].outputs[0]
    assert out.text == full[:full.index(stop) + len(stop)]
    ids = llm.generate(PROMPTS[2], GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    out = llm.generate(PROMPTS[2], SamplingParams(temperature=0, max_tokens=16,
                                                  stop_token_ids=[ids[3]]), use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == ids[3]
    assert list(out.token_ids) == list(ids[:ids.index(ids[3]) + 1])


def test_ignore_eos_min_tokens(llm):
    eos = llm.get_tokenizer().eos_token_id
    out = llm.generate(PROMPTS[6], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True),
                       use_tqdm=False)[0].outputs[0]
    assert len(out.token_ids) == 40 and out.finish_reason == "length"
    out = llm.generate(PROMPTS[6], SamplingParams(temperature=0, max_tokens=20, min_tokens=10,
                                                  logit_bias={eos: 100.0}), use_tqdm=False)[0].outputs[0]
    # The bias makes EOS certain, but not before min_tokens.
    assert len(out.token_ids) == 11 and out.token_ids[-1] == eos and out.finish_reason == "stop"


def test_logprobs(llm):
    out = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=5, logprobs=3,
                                                  prompt_logprobs=2), use_tqdm=False)[0]
    c = out.outputs[0]
    assert len(c.logprobs) == 5
    for tok, pos in zip(c.token_ids, c.logprobs):
        assert tok in pos and pos[tok].rank == 1  # greedy picks the top token
        assert 3 <= len(pos) <= 4
        assert all(lp.logprob <= 0 for lp in pos.values())
    assert math.isclose(c.cumulative_logprob, sum(p[t].logprob for t, p in zip(c.token_ids, c.logprobs)),
                        rel_tol=1e-4, abs_tol=1e-4)
    assert out.prompt_logprobs[0] is None
    assert len(out.prompt_logprobs) == len(out.prompt_token_ids)
    for tok, pos in zip(out.prompt_token_ids[1:], out.prompt_logprobs[1:]):
        assert tok in pos and 2 <= len(pos) <= 3


@pytest.mark.parametrize("kwargs,field", [
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=-2), "top_k"),
    (dict(n=0), "n"),
    (dict(n=100000), "n"),
    (dict(stop=[""]), "stop"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(min_p=1.5), "min_p"),
])
def test_bad_sampling_params(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_bad_prompts(llm):
    vocab = llm.llm_engine.model_info.vocab_size
    with pytest.raises(ValueError, match="prompt"):
        llm.generate("", GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="prompt"):
        llm.generate([[]], GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="vocab"):
        llm.generate([[1, 2, vocab]], GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="maximum model length"):
        llm.generate([[5] * 1025], GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="logprobs"):
        llm.generate("hi", SamplingParams(logprobs=21), use_tqdm=False)
    # A bad prompt in a batch queues nothing: the good ones are not left behind.
    with pytest.raises(ValueError):
        llm.generate(["fine", ""], GREEDY, use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()


def test_abort_frees_blocks(llm):
    eng = llm.llm_engine
    for i in range(4):
        eng.add_request(f"a{i}", PROMPTS[i], SamplingParams(max_tokens=50, ignore_eos=True))
    eng.step()
    eng.step()
    assert eng.scheduler.device_usage() > 0
    eng.abort_request([f"a{i}" for i in range(4)])
    assert eng.scheduler.device_usage() == 0.0


def test_unsupported_flags_are_refused():
    with pytest.raises(ValueError, match="tensor-parallel-size"):
        LLM(tensor_parallel_size=2)
    with pytest.raises(ValueError, match="enable-lora"):
        LLM(enable_lora=True)
    with pytest.raises(TypeError, match="not_a_flag"):
        LLM(not_a_flag=1)
    with pytest.raises(ValueError, match="(?i)no such file"):
        LLM(model="/nonexistent/model/path")


@pytest.mark.parametrize("dtype", ["fp8", "fp8_e4m3", "fp8_e5m2"])
def test_fp8_kv_cache_needs_cuda(dtype):
    with pytest.raises(ValueError, match="kv-cache-dtype .*CUDA"):
        LLM(kv_cache_dtype=dtype, device="cpu", max_model_len=256)


def test_chat(llm):
    out = llm.chat([{"role": "user", "content": "What is 2+2?"}], SamplingParams(temperature=0, max_tokens=16),
                   use_tqdm=False)
    assert out[0].outputs[0].text.strip()
    tok = llm.get_tokenizer()
    assert "user" in tok.decode(out[0].prompt_token_ids)


def test_many_random_requests_leave_engine_clean(llm):
    rng = np.random.default_rng(0)
    vocab = llm.llm_engine.model_info.vocab_size
    prompts = [rng.integers(100, vocab, size=int(rng.integers(1, 200))).tolist() for _ in range(40)]
    params = []
    for _ in prompts:
        n = int(rng.integers(1, 3))
        temperature = float(rng.choice([0.7, 1.0])) if n > 1 else float(rng.choice([0.0, 0.7, 1.0]))
        params.append(SamplingParams(temperature=temperature, max_tokens=int(rng.integers(1, 20)), n=n,
                                     seed=int(rng.integers(0, 10)), ignore_eos=True))
    outs = llm.generate(prompts, params, use_tqdm=False)
    for o, p in zip(outs, params):
        assert len(o.outputs) == p.n
        assert all(len(c.token_ids) == p.max_tokens for c in o.outputs)
