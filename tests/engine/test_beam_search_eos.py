"""Beam search stops hypotheses at every EOS id of the model's generation_config (and at
the request's stop_token_ids), not only at the tokenizer's EOS."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field

import pytest
import torch

from llmcore.engine.beam_search import BeamState, beam_stop_ids, step_beams


@dataclass
class _Beam:
    output_token_ids: list = field(default_factory=list)
    cumulative_logprob: float = 0.0


def test_beam_stop_ids():
    assert beam_stop_ids(2, False, [9, 11]) == {2, 9, 11}
    assert beam_stop_ids(2, True, [9]) == {9}       # ignore_eos drops only the primary EOS
    assert beam_stop_ids(None, False, []) == frozenset()


def test_step_beams_finishes_hypotheses_at_each_stop_id():
    state = BeamState(width=2, length_penalty=1.0, early_stopping=False)
    beams = [_Beam([5], -1.0), _Beam([6], -1.5)]
    # beam 0's best next token is 9 (an extra EOS id), beam 1's is 2 (the primary EOS)
    topk = ([[9, 7, 8, 3], [2, 4, 8, 3]], [[-0.1, -0.5, -0.9, -1.0], [-0.1, -0.6, -0.7, -1.2]])
    d = step_beams(state, beams, topk, beam_stop_ids(2, False, [9]), max_tokens=10,
                   at_max_len=lambda n: False, eos_token_id=2)
    got = {tuple(h.token_ids): (h.finish_reason, h.stop_reason) for h in state.finished}
    assert got == {(5, 9): ("stop", 9), (6, 2): ("stop", None)}
    assert [(p is beams[0], t) for p, t, _, _ in d.continue_beams] == [(True, 7), (True, 8)]
    # without the extra id, 9 continues as an ordinary token
    state = BeamState(width=2, length_penalty=1.0, early_stopping=False)
    d = step_beams(state, beams, topk, beam_stop_ids(2, False, []), max_tokens=10,
                   at_max_len=lambda n: False, eos_token_id=2)
    assert [t for _, t, _, _ in d.continue_beams] == [9, 7]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    import transformers as tf

    cfg = tf.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    out = str(tmp_path_factory.mktemp("tiny_beam"))
    tf.LlamaForCausalLM(cfg).save_pretrained(out)
    gen = os.path.join(out, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    return out


def _beam_outputs(folder, **kw):
    from llmcore.entrypoints.llm import LLM
    from llmcore.sampling_params import SamplingParams

    llm = LLM(model=folder, device="cpu", skip_tokenizer_init=True, max_model_len=128,
              num_gpu_blocks_override=64, max_num_seqs=8, **kw)
    params = SamplingParams(n=3, best_of=3, use_beam_search=True, temperature=0.0,
                            max_tokens=6, detokenize=False)
    out = llm.generate({"prompt_token_ids": [5, 6, 7, 8]}, params, use_tqdm=False)[0].outputs
    s = llm.llm_engine.scheduler
    assert s.num_free_device_blocks() == s.num_device_blocks()
    return out


def test_generation_config_eos_ids_stop_beams(tiny_folder, tmp_path):
    base = _beam_outputs(tiny_folder, generation_config="vllm")
    x = base[0].token_ids[0]            # the best hypothesis' first token
    assert x != 2 and len(base[0].token_ids) > 1 and x in base[0].token_ids[:-1]
    folder = str(tmp_path / "m")
    shutil.copytree(tiny_folder, folder)
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": [2, x]}, f)
    outs = _beam_outputs(folder)
    assert len(outs) == 3
    for o in outs:
        ids = list(o.token_ids)
        assert x not in ids[:-1], f"hypothesis {ids} ran past the EOS id {x}"
        if ids and ids[-1] == x:
            assert (o.finish_reason, o.stop_reason) == ("stop", x)
