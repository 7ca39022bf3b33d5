import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmcore.tokenizer.detokenizer import IncrementalDetokenizer

MULTIBYTE_TEXTS = [
    "世界你好，今天天气很好。", "🎉🎉👍🏽😀 family: 👨‍👩‍👧‍👦", "naïve café — “quotes” ñ ü ß",
    "日本語のテキストと한국어", "Ελληνικά и русский текст", "emoji🤖in😅the🚀middle",
]


@pytest.fixture(scope="module")
def pools(smollm2_tokenizer):
    tok = smollm2_tokenizer
    mb = sorted({i for t in MULTIBYTE_TEXTS for i in tok.encode(t, add_special_tokens=False)})
    special = sorted(set(tok.all_special_ids) | set(range(17)))
    return mb, special


def stream(tok, ids, skip):
    d = IncrementalDetokenizer(tok, [1, 2, 3], skip_special_tokens=skip)
    texts = []
    for t in ids:
        delta = d.append(t)
        assert not delta.endswith("\ufffd") or delta == ""
        texts.append(d.text)
    tail = d.flush()
    return d, texts, tail


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("text", MULTIBYTE_TEXTS + [
    "Hello world! This is a test of incremental detokenization.\n\nNew paragraph,   spaces.",
    "def f(x):\n    return x ** 2  # comment\n",
])
def test_real_text(smollm2_tokenizer, text, skip):
    tok = smollm2_tokenizer
    ids = tok.encode(text, add_special_tokens=False) + [2]
    d, texts, tail = stream(tok, ids, skip)
    assert d.text == tok.decode(ids, skip_special_tokens=skip)
    assert d.output_token_ids == ids
    assert tail == ""
    assert "\ufffd" not in d.text
    # every intermediate text is a prefix of the final one
    for t in texts:
        assert d.text.startswith(t)


def test_window_stays_small(smollm2_tokenizer):
    tok = smollm2_tokenizer
    ids = tok.encode(" ".join(MULTIBYTE_TEXTS) * 20, add_special_tokens=False)
    d = IncrementalDetokenizer(tok, [], skip_special_tokens=True)
    max_window = 0
    for t in ids:
        d.append(t)
        max_window = max(max_window, len(d.output_token_ids) - d.prefix_offset)
    assert max_window <= 8
    d.flush()
    assert d.text == tok.decode(ids)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), skip=st.booleans())
def test_random_ids_match_full_decode(smollm2_tokenizer, pools, data, skip):
    tok = smollm2_tokenizer
    mb, special = pools
    tid = st.one_of(st.integers(0, len(tok) - 1), st.sampled_from(mb), st.sampled_from(mb),
                    st.sampled_from(special), st.integers(len(tok), len(tok) + 5))
    ids = data.draw(st.lists(tid, max_size=40))
    d, texts, tail = stream(tok, ids, skip)
    full = tok.decode(ids, skip_special_tokens=skip)
    assert d.text == full
    for t in texts:
        assert full.startswith(t)


def test_final_flag(smollm2_tokenizer):
    tok = smollm2_tokenizer
    ids = tok.encode("世", add_special_tokens=False)
    assert len(ids) >= 2  # multi-token character
    d = IncrementalDetokenizer(tok, [])
    assert d.append(ids[0]) == ""
    # incomplete char ends the sequence: final=True releases the replacement char
    out = d.append(ids[1] if len(ids) == 2 else ids[1], final=True)
    assert d.text == tok.decode(ids[:2])
    assert out == d.text


def test_fast_tokenizer_decodes_through_backend(smollm2_tokenizer):
    """SmolLM2's tokenizer takes the direct Rust decode (so the tests above exercise it); a
    class that overrides _decode keeps going through tokenizer.decode."""
    tok = smollm2_tokenizer
    assert IncrementalDetokenizer(tok)._backend_decode is not None

    class Custom(type(tok)):
        def _decode(self, token_ids, **kw):
            return super()._decode(token_ids, **kw).upper()

    custom = copy.copy(tok)
    custom.__class__ = Custom
    d = IncrementalDetokenizer(custom, skip_special_tokens=True)
    assert d._backend_decode is None
    ids = tok.encode("Hello world", add_special_tokens=False)
    d.extend(ids)
    d.flush()
    assert d.text == custom.decode(ids, skip_special_tokens=True) == "HELLO WORLD"
