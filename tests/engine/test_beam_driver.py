"""Beam search above the engine core (engine/beam_driver.py) on a tiny random Llama.

Expected outputs: `beam_search_expected.json`, recorded from the in-core implementation
this replaced (same prompts and params) — it agreed on all but two hypotheses of the
18-token prompt, where an HF-logits reference of the same search (checked here too)
agrees with the new results, so the file holds those. The engine stays in its pipelined
loop while beams run; aborting a search frees every KV block.
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from llmcore.beam_search_params import BeamSearchParams
from llmcore.engine.beam_driver import BeamSearchRun
from llmcore.engine.beam_search import Beam, BeamState, beam_stop_ids, best_hypotheses, step_beams
from llmcore.entrypoints.llm import LLM
from llmcore.sampling_params import SamplingParams

PROMPTS = [[5, 6, 7, 8], [100, 3, 42], [9] * 17 + [200]]
EXPECTED = os.path.join(os.path.dirname(__file__), "beam_search_expected.json")
MAX_MODEL_LEN = 128
ENGINE = dict(device="cpu", skip_tokenizer_init=True, max_model_len=MAX_MODEL_LEN,
              num_gpu_blocks_override=64, max_num_seqs=8)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny Llama whose next-token distributions are peaked (scaled head), so searches
    branch and stop ids get chosen."""
    import torch
    import transformers as tf

    cfg = tf.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    out = str(tmp_path_factory.mktemp("tiny_beam_driver"))
    model.save_pretrained(out)
    gen = os.path.join(out, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    return out


@pytest.fixture(scope="module")
def llm(tiny_folder):
    return LLM(model=tiny_folder, async_scheduling=True, **ENGINE)


def _hf_beam_search(model, prompt, params: SamplingParams):
    """The same search on HF's own logits, one full forward per beam and step."""
    import torch

    width = params.best_of
    state = BeamState(width, params.length_penalty, params.early_stopping)
    stop_ids = beam_stop_ids(2, params.ignore_eos, params.stop_token_ids)
    beams = [Beam([])]
    while True:
        ids, lps = [], []
        for b in beams:
            with torch.no_grad():
                logits = model(torch.tensor([prompt + b.output_token_ids])).logits[0, -1]
            v, i = logits.float().log_softmax(-1).topk(2 * width)
            ids.append(i.tolist())
            lps.append(v.tolist())
        d = step_beams(state, beams, (ids, lps), stop_ids, params.max_tokens,
                       lambda n: len(prompt) + n >= MAX_MODEL_LEN, 2)
        if d.done:
            return [(h.token_ids, h.cumulative_logprob) for h in best_hypotheses(state, params.n)]
        beams = [Beam(p.output_token_ids + [t], v) for p, t, v, _ in d.continue_beams]


def test_outputs_equal_recorded_and_hf_reference(llm, tiny_folder):
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_folder, dtype=torch.float32).eval()
    with open(EXPECTED) as f:
        cases = json.load(f)
    for case in cases:
        params = SamplingParams(use_beam_search=True, temperature=0.0, detokenize=False,
                                **case["params"])
        outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
        for prompt, out, expected in zip(PROMPTS, outs, case["outputs"]):
            got = [[list(c.token_ids), c.cumulative_logprob, c.finish_reason, c.stop_reason]
                   for c in out.outputs]
            assert [g[0] for g in got] == [e[0] for e in expected], case["params"]
            assert [g[2:] for g in got] == [e[2:] for e in expected], case["params"]
            assert [g[1] for g in got] == pytest.approx([e[1] for e in expected], abs=1e-4)
            ref = _hf_beam_search(hf, prompt, params)
            assert [g[0] for g in got] == [r[0] for r in ref], (case["params"], prompt)
            assert [g[1] for g in got] == pytest.approx([r[1] for r in ref], abs=1e-3)
    s = llm.llm_engine.scheduler
    assert s.num_free_device_blocks() == s.num_device_blocks()


def test_beam_search_api_shares_the_driver(llm):
    params = SamplingParams(n=3, best_of=3, use_beam_search=True, temperature=0.0,
                            max_tokens=10, detokenize=False)
    expected = llm.generate([{"prompt_token_ids": PROMPTS[0]}], params, use_tqdm=False)[0]
    got = llm.beam_search([{"prompt_token_ids": PROMPTS[0]}],
                          BeamSearchParams(beam_width=3, max_tokens=10))[0]
    assert [s.tokens for s in got.sequences] == \
        [PROMPTS[0] + list(c.token_ids) for c in expected.outputs]
    assert [s.cum_logprob for s in got.sequences] == \
        pytest.approx([c.cumulative_logprob for c in expected.outputs])
    with pytest.raises(ValueError, match="temperature"):
        llm.beam_search([[5, 6]], BeamSearchParams(beam_width=2, max_tokens=3, temperature=0.5))
    req = llm.llm_engine.make_request("w", [5, 6], SamplingParams(
        n=1, best_of=6, use_beam_search=True, temperature=0.0, max_tokens=3))
    with pytest.raises(ValueError, match="max-logprobs"):   # reads the top 12 per step
        BeamSearchRun(req, 2, MAX_MODEL_LEN, max_logprobs=10)
    assert not llm.llm_engine.has_unfinished_requests()


def test_beam_in_async_batch_keeps_others_and_pipelined_loop(llm):
    eng = llm.llm_engine
    greedy = SamplingParams(temperature=0.0, max_tokens=12, detokenize=False)
    alone = [o.outputs[0].token_ids for o in
             llm.generate([{"prompt_token_ids": p} for p in PROMPTS], greedy, use_tqdm=False)]
    beam = SamplingParams(n=2, best_of=3, use_beam_search=True, temperature=0.0,
                          max_tokens=8, detokenize=False)
    for i, p in enumerate(PROMPTS):
        eng.add_request(f"g{i}", {"prompt_token_ids": p}, greedy)
    eng.add_request("beam", {"prompt_token_ids": PROMPTS[1]}, beam)
    done, pipelined_steps = {}, 0
    while eng.has_unfinished_requests():
        outs = eng.step()
        assert eng._num_unpipelinable == 0
        pipelined_steps += eng._inflight is not None
        assert all("#beam" not in o.request_id for o in outs)   # step requests stay inside
        done.update({o.request_id: o for o in outs if o.finished})
    assert sorted(done) == ["beam", "g0", "g1", "g2"]
    assert [done[f"g{i}"].outputs[0].token_ids for i in range(3)] == alone
    ref = llm.generate([{"prompt_token_ids": PROMPTS[1]}], beam, use_tqdm=False)[0]
    assert [c.token_ids for c in done["beam"].outputs] == [c.token_ids for c in ref.outputs]
    assert pipelined_steps > 0
    s = eng.scheduler
    assert s.num_free_device_blocks() == s.num_device_blocks()


def test_abort_mid_beam_frees_blocks(llm):
    eng = llm.llm_engine
    eng.add_request("b", {"prompt_token_ids": PROMPTS[2]},
                    SamplingParams(n=2, best_of=4, use_beam_search=True, temperature=0.0,
                                   max_tokens=30, ignore_eos=True, detokenize=False))
    run = eng.beam_search.runs["b"][0]
    while run.num_steps < 3:
        assert not any(o.finished for o in eng.step())
    assert eng.get_num_unfinished_requests() == 1
    eng.abort_request("b")
    assert not eng.has_unfinished_requests() and not eng.beam_search.num_step_requests()
    while eng.scheduler.num_free_device_blocks() != eng.scheduler.num_device_blocks():
        assert eng.step() == []   # an in-flight pipelined step drains
        assert eng._inflight is None or eng.scheduler.num_running() == 0


def test_async_llm_beam_equals_offline_and_abort_frees_blocks(llm, tiny_folder):
    from llmcore.config import EngineArgs
    from llmcore.engine.async_llm import AsyncLLM
    from llmcore.engine.core_types import SchedulerStats

    params = SamplingParams(n=2, best_of=3, use_beam_search=True, temperature=0.0,
                            max_tokens=8, detokenize=False)
    expected = llm.generate([{"prompt_token_ids": PROMPTS[0]}], params, use_tqdm=False)[0]
    long = SamplingParams(n=2, best_of=3, use_beam_search=True, temperature=0.0,
                          max_tokens=60, ignore_eos=True, detokenize=False)

    async def main():
        engine = AsyncLLM(EngineArgs(model=tiny_folder, disable_log_stats=True,
                                     async_scheduling=True, **ENGINE))
        try:
            outs = [o async for o in engine.generate({"prompt_token_ids": PROMPTS[0]}, params,
                                                     request_id="a")]
            assert len(outs) == 1 and outs[0].finished
            assert [c.token_ids for c in outs[0].outputs] == \
                [c.token_ids for c in expected.outputs]
            with pytest.raises(ValueError, match="already in use"):
                stream = engine.generate([1, 2], params, request_id="x")
                engine.generate([1, 2], params, request_id="x")
            del stream
            # abort() and a consumer that goes away, both while a step is in flight
            for how in ("abort", "cancel"):
                stream = engine.generate({"prompt_token_ids": PROMPTS[2]}, long,
                                         request_id=how)
                consumer = asyncio.ensure_future(stream.__anext__())
                # wait for the beam to issue its third step (a counter that only grows: a
                # step's requests are too short-lived to be caught in flight reliably)
                while engine._beams[how].num_steps < 3:
                    await asyncio.sleep(0.01)
                if how == "abort":
                    await engine.abort(how)
                    with pytest.raises(StopAsyncIteration):
                        await consumer
                else:
                    consumer.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await consumer
                    await stream.aclose()
                assert how not in engine._beams and how not in engine._beam_tasks
                assert not any(r.startswith(how) for r in engine.frontend.requests)
                stats = await engine.client.call_utility_async("get_stats",
                                                               result_type=SchedulerStats)
                assert stats.num_free_blocks == stats.num_total_blocks, how
        finally:
            engine.shutdown()

    asyncio.run(main())


def test_prefix_caching_shares_the_beams_prompt(tiny_folder):
    llm = LLM(model=tiny_folder, enable_prefix_caching=True, block_size=16, **ENGINE)
    eng = llm.llm_engine
    prompt = list(range(10, 10 + 4 * 16))
    eng.add_request("b", {"prompt_token_ids": prompt},
                    SamplingParams(n=1, best_of=3, use_beam_search=True, temperature=0.0,
                                   max_tokens=6, ignore_eos=True, detokenize=False))
    used = []
    while eng.has_unfinished_requests():
        eng.step()
        s = eng.scheduler
        used.append(s.num_device_blocks() - s.num_free_device_blocks())
    # 3 beams of 4 prompt blocks + their own last block each: the prompt is cached once
    assert max(used) <= 4 + 3, used
    assert eng.get_stats().prefix_cache_hit_rate > 0
