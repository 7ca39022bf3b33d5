import math

import pytest

from llmcore.sampling_params import SamplingParams, SamplingType

BAD = [
    ("temperature", dict(temperature=-0.1)),
    ("temperature", dict(temperature=float("inf"))),
    ("temperature", dict(temperature=float("nan"))),
    ("top_p", dict(top_p=0.0)),
    ("top_p", dict(top_p=1.01)),
    ("top_p", dict(top_p=float("nan"))),
    ("top_k", dict(top_k=0)),
    ("top_k", dict(top_k=-2)),
    ("top_k", dict(top_k=1.5)),
    ("min_p", dict(min_p=-0.01)),
    ("min_p", dict(min_p=1.5)),
    ("n", dict(n=0)),
    ("n", dict(n=-1)),
    ("n", dict(n=10**6)),
    ("n", dict(n=1.0)),
    ("best_of", dict(n=3, best_of=2)),
    ("presence_penalty", dict(presence_penalty=2.5)),
    ("presence_penalty", dict(presence_penalty=-2.01)),
    ("frequency_penalty", dict(frequency_penalty=3)),
    ("frequency_penalty", dict(frequency_penalty=-3)),
    ("repetition_penalty", dict(repetition_penalty=0.0)),
    ("repetition_penalty", dict(repetition_penalty=-1.0)),
    ("repetition_penalty", dict(repetition_penalty=float("inf"))),
    ("stop", dict(stop="")),
    ("stop", dict(stop=["ok", ""])),
    ("stop", dict(stop=[1])),
    ("stop_token_ids", dict(stop_token_ids=[-1])),
    ("max_tokens", dict(max_tokens=0)),
    ("max_tokens", dict(max_tokens=-5)),
    ("min_tokens", dict(min_tokens=-1)),
    ("min_tokens", dict(min_tokens=20, max_tokens=10)),
    ("logprobs", dict(logprobs=-1)),
    ("prompt_logprobs", dict(prompt_logprobs=-1)),
    ("logit_bias", dict(logit_bias={1: 100.5})),
    ("logit_bias", dict(logit_bias={1: float("inf")})),
    ("logit_bias", dict(logit_bias={1: float("nan")})),
    ("logit_bias", dict(logit_bias={"abc": 1.0})),
    ("logit_bias", dict(logit_bias={-3: 1.0})),
    ("logit_bias", dict(logit_bias=[1, 2])),
    ("seed", dict(seed=1.5)),
    ("seed", dict(seed="42")),
    ("truncate_prompt_tokens", dict(truncate_prompt_tokens=0)),
    ("early_stopping", dict(early_stopping="sometimes", use_beam_search=True, best_of=2,
                            temperature=0)),
    ("early_stopping", dict(early_stopping=True)),          # only with beam search
    ("length_penalty", dict(length_penalty=2.0)),           # only with beam search
    ("best_of", dict(use_beam_search=True, temperature=0)),  # beam needs best_of > 1
    ("temperature", dict(use_beam_search=True, best_of=2, temperature=0.5)),
    ("top_p", dict(use_beam_search=True, best_of=2, temperature=0, top_p=0.5)),
    ("top_k", dict(use_beam_search=True, best_of=2, temperature=0, top_k=5)),
    ("min_p", dict(use_beam_search=True, best_of=2, temperature=0, min_p=0.1)),
    ("best_of", dict(temperature=0, n=1, best_of=2)),        # greedy needs best_of == 1
]


@pytest.mark.parametrize("field,kwargs", BAD, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD)])
def test_bad_values_raise_naming_field(field, kwargs):
    with pytest.raises(ValueError) as ei:
        SamplingParams(**kwargs)
    assert field in str(ei.value)


def test_defaults_match_vllm_v0():
    p = SamplingParams()
    assert (p.n, p.best_of, p.temperature, p.top_p, p.top_k, p.min_p) == (1, 1, 1.0, 1.0, -1, 0.0)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0, 0, 1)
    assert p.max_tokens == 16 and p.min_tokens == 0 and p.seed is None
    assert p.stop == [] and p.stop_token_ids == [] and p.logit_bias is None
    assert p.skip_special_tokens and p.spaces_between_special_tokens and p.detokenize
    assert not p.ignore_eos and not p.include_stop_str_in_output
    assert p.logprobs is None and p.prompt_logprobs is None
    assert p.sampling_type == SamplingType.RANDOM


def test_normalisation():
    p = SamplingParams(stop="###", stop_token_ids=(5, 6), logit_bias={"12": 3, 7: -1},
                       max_tokens=None, n=2, best_of=None)
    assert p.stop == ["###"] and p.stop_token_ids == [5, 6]
    assert p.logit_bias == {12: 3.0, 7: -1.0}
    assert p.max_tokens is None and p.best_of == 2
    assert {5, 6} <= p.all_stop_token_ids


def test_greedy_resets_filters():
    p = SamplingParams(temperature=0.0, top_p=0.3, top_k=5, min_p=0.2)
    assert (p.top_p, p.top_k, p.min_p) == (1.0, -1, 0.0)
    assert p.sampling_type == SamplingType.GREEDY
    p = SamplingParams(temperature=1e-6)
    assert p.sampling_type == SamplingType.GREEDY


def test_sampling_types():
    assert SamplingParams(seed=3).sampling_type == SamplingType.RANDOM_SEED
    assert SamplingParams(use_beam_search=True, best_of=3, temperature=0,
                          early_stopping="never", length_penalty=0.5).sampling_type == SamplingType.BEAM


def test_clone_is_deep():
    p = SamplingParams(stop=["a"], logit_bias={1: 2.0})
    q = p.clone()
    q.stop.append("b")
    q.logit_bias[3] = 1.0
    assert p.stop == ["a"] and p.logit_bias == {1: 2.0}
    assert q == SamplingParams(stop=["a", "b"], logit_bias={1: 2.0, 3: 1.0})


def test_generation_config_eos():
    p = SamplingParams()
    p.update_from_generation_config({"eos_token_id": [2, 7]}, model_eos_token_id=2)
    assert p.stop_token_ids == [7]
    assert p.all_stop_token_ids == {2, 7}
    q = SamplingParams(ignore_eos=True)
    q.update_from_generation_config({"eos_token_id": [2, 7]}, model_eos_token_id=2)
    assert q.stop_token_ids == [] and q.all_stop_token_ids == {2, 7}


def test_output_text_buffer_length():
    assert SamplingParams(stop=["ab", "abcd"]).output_text_buffer_length == 3
    assert SamplingParams(stop=["ab"], include_stop_str_in_output=True).output_text_buffer_length == 0


def test_good_edge_values():
    SamplingParams(top_p=1.0, top_k=1, min_p=1.0, presence_penalty=-2, frequency_penalty=2,
                   max_tokens=1, min_tokens=1, logprobs=0, prompt_logprobs=0,
                   logit_bias={0: -100, 1: 100}, seed=0, n=1024)
    assert math.isclose(SamplingParams(repetition_penalty=1e-3).repetition_penalty, 1e-3)
