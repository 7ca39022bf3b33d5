"""Guided decoding with tensor parallelism (the multiprocess executor): the mask travels in
the step input to every worker. A scripted backend (token 10 + i at step i) on a tiny random
Llama needs no tokenizer; a free request in the same batch keeps its TP=1 tokens. With
pipeline parallelism the steps are micro-batches in flight two at a time: each guided
sequence's mask is filled when its micro-batch is launched, after its previous token came
back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmcore import LLM, GuidedDecodingParams, SamplingParams
from llmcore.structured_output import manager as manager_mod
from llmcore.structured_output.backend import GrammarMatcher, StructuredOutputBackend, allow_token

_CFG = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            tie_word_embeddings=False)


class _Scripted(GrammarMatcher):
    def __init__(self):
        self.n = 0

    def accept_token(self, token_id):
        ok = token_id == 10 + self.n
        self.n += ok
        return ok

    def fill_bitmask(self, bitmask, row):
        allow_token(bitmask[row], 10 + self.n)

    def rollback(self, num_tokens):
        self.n -= num_tokens

    def is_terminated(self):
        return False


class _ScriptedBackend(StructuredOutputBackend):
    def compile(self, spec):
        return spec

    def new_matcher(self, compiled):
        return _Scripted()


@pytest.fixture
def tiny_llama(tmp_path, monkeypatch):
    import transformers as tf
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**_CFG)).float().eval()
    model.save_pretrained(str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(manager_mod, "get_backend_class", lambda name: _ScriptedBackend)
    monkeypatch.setattr("llmcore.tokenizer.loader.load_tokenizer", lambda mc: object())
    return str(tmp_path)


def _run(folder, tp, pp=1, copies=1):
    llm = LLM(model=folder, tensor_parallel_size=tp, pipeline_parallel_size=pp,
              skip_tokenizer_init=True, device="cpu", dtype="float32", max_model_len=128,
              cpu_kv_cache_space=0.01, max_num_seqs=8, seed=0)
    try:
        free = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
        guided = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True,
                                guided_decoding=GuidedDecodingParams(regex="scripted"))
        outs = llm.generate(prompt_token_ids=[list(range(3, 9)), list(range(20, 31))] * copies,
                            sampling_params=[free, guided] * copies, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]
    finally:
        llm.llm_engine.core.shutdown()


def test_tp2_mask_reaches_the_workers(tiny_llama):
    tp1 = _run(tiny_llama, 1)
    tp2 = _run(tiny_llama, 2)
    assert tp1[1] == tp2[1] == list(range(10, 16))
    assert tp2[0] == tp1[0]
    assert not np.array_equal(tp1[0], list(range(10, 16)))


def test_pp2_micro_batches_fill_each_mask_after_the_previous_token(tiny_llama):
    pp1 = _run(tiny_llama, 1, copies=2)
    pp2 = _run(tiny_llama, 1, pp=2, copies=2)
    assert pp2 == pp1
    assert pp2[1] == pp2[3] == list(range(10, 16))
