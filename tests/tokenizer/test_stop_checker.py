from hypothesis import given, settings
from hypothesis import strategies as st

from llmcore.sampling_params import SamplingParams
from llmcore.tokenizer.stop_checker import (check_stop, check_stop_strings,
                                            stop_holdback_len, streamable_text_len)

EOS = 2


def run(params, deltas, tokens=None, prompt_len=3, max_model_len=1000):
    """Engine-like loop over text deltas. Returns (text, finish_reason, stop_reason, streamed)."""
    text = ""
    streamed = ""
    tokens = tokens or [100] * len(deltas)
    for i, (delta, tok) in enumerate(zip(deltas, tokens)):
        text += delta
        res = check_stop(params, output_text=text, new_char_count=len(delta), last_token_id=tok,
                         num_output_tokens=i + 1, num_total_tokens=prompt_len + i + 1,
                         max_model_len=max_model_len, eos_token_id=EOS)
        if res is not None and res.truncate_to is not None:
            text = text[:res.truncate_to]
        n = streamable_text_len(text, params, finished=res is not None)
        assert n >= len(streamed) and text[:len(streamed)] == streamed
        streamed = text[:n]
        if res is not None:
            return text, res.finish_reason, res.stop_reason, streamed
    return text, None, None, streamed


def test_stop_string_across_tokens():
    p = SamplingParams(stop=["STOP"], max_tokens=100)
    text, fr, sr, streamed = run(p, ["Hello S", "T", "OP and more"])
    assert (text, fr, sr) == ("Hello ", "stop", "STOP") and streamed == text
    p = SamplingParams(stop=["STOP"], include_stop_str_in_output=True, max_tokens=100)
    assert run(p, ["Hello S", "T", "OP and more"])[:3] == ("Hello STOP", "stop", "STOP")
    assert run(p, ["Hello S", "TOP"])[:3] == ("Hello STOP", "stop", "STOP")


def test_earliest_stop_wins():
    p = SamplingParams(stop=["world", "lo"], max_tokens=100)
    assert run(p, ["hello world"])[:3] == ("hel", "stop", "lo")


def test_stop_token_and_eos():
    p = SamplingParams(stop_token_ids=[7], max_tokens=100)
    assert run(p, ["a", "b", "<x>"], [5, 6, 7])[:3] == ("ab", "stop", 7)
    p = SamplingParams(stop_token_ids=[7], include_stop_str_in_output=True)
    assert run(p, ["a", "<x>"], [5, 7])[:3] == ("a<x>", "stop", 7)
    p = SamplingParams(max_tokens=100)
    assert run(p, ["a", "</s>"], [5, EOS])[:3] == ("a", "stop", None)
    assert run(p, ["a", ""], [5, EOS])[:3] == ("a", "stop", None)
    p = SamplingParams(max_tokens=3, ignore_eos=True)
    assert run(p, ["a", "</s>", "b"], [5, EOS, 5])[:3] == ("a</s>b", "length", None)


def test_min_tokens_and_lengths():
    p = SamplingParams(min_tokens=3, max_tokens=10, stop=["x"], stop_token_ids=[7])
    assert run(p, ["x", "y", "z", "w"], [EOS, 7, 5, 5])[:3] == ("xyzw", None, None)
    assert run(p, ["x", "y", "z", "x"], [EOS, 7, 5, 5])[:3] == ("xyz", "stop", "x")
    p = SamplingParams(max_tokens=2)
    assert run(p, ["a", "b", "c"])[:3] == ("ab", "length", None)
    p = SamplingParams(max_tokens=None, min_tokens=5)
    assert run(p, ["a"] * 10, prompt_len=5, max_model_len=8)[:3] == ("aaa", "length", None)


def test_check_stop_strings_only_searches_tail():
    # a stop string entirely in old text is not re-detected
    assert check_stop_strings("ab STOP cd", 2, ["STOP"], False) is None
    assert check_stop_strings("ab STOP", 2, ["STOP"], False) == ("STOP", 3)
    assert check_stop_strings("ab STOP", 0, ["STOP"], False) is None


def test_holdback():
    assert stop_holdback_len("hello wor", ["world"]) == 3
    assert stop_holdback_len("hello", ["world"]) == 0
    assert stop_holdback_len("abab", ["abc", "bab"]) == 2
    assert stop_holdback_len("abab", ["abc", "baba"]) == 3
    assert stop_holdback_len("x", ["x"]) == 0   # a full stop string is not a proper prefix


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="abc d", max_size=40),
       stops=st.lists(st.text(alphabet="abc d", min_size=1, max_size=4), min_size=1, max_size=3),
       cuts=st.lists(st.integers(1, 5), max_size=40), include=st.booleans())
def test_streaming_never_leaks_partial_stop(text, stops, cuts, include):
    deltas, i = [], 0
    for c in cuts + [len(text)]:
        if i >= len(text):
            break
        deltas.append(text[i:i + c])
        i += c
    p = SamplingParams(stop=stops, include_stop_str_in_output=include, max_tokens=1000)
    out, fr, sr, streamed = run(p, deltas)
    # reference: the first delta after which the text contains a stop string; within
    # it the earliest start wins (ties: the longer string)
    hits, end = [], 0
    for dl in deltas:
        end += len(dl)
        hits = [(text[:end].find(s), -len(s), s) for s in stops if s in text[:end]]
        if hits:
            break
    if hits:
        pos, neg_len, s = min(hits)
        exp_text = text[:pos - neg_len] if include else text[:pos]
        assert fr == "stop" and out == exp_text
        # the earliest-finishing occurrence stops first; its text is a prefix of exp.
    else:
        assert fr is None and out == text
    assert streamed == out if fr else out.startswith(streamed)
    if not include and fr is None:
        for s in stops:
            assert s not in streamed
