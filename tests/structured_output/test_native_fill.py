"""xgrammar's mask fill on a native thread (llmcore._core.FfiCallThread through tvm-ffi's C
ABI): the same bitmask as xgrammar's own Python call, errors that name the cause, and the
manager's start_fill mixing it with a backend that fills inline."""

from __future__ import annotations

import json

import numpy as np
import pytest

xgr = pytest.importorskip("xgrammar")

from llmcore.config.engine_config import StructuredOutputConfig  # noqa: E402
from llmcore.sampling_params import GuidedDecodingParams  # noqa: E402
from llmcore.structured_output.manager import StructuredOutputManager  # noqa: E402
from llmcore.structured_output.xgrammar_backend import _NativeBatchFill  # noqa: E402

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                           "age": {"type": "integer"}},
          "required": ["name", "age"]}
# (xgrammar's JSON without free whitespace still separates with ": " and ", ")
PREFIXES = ["", '{"', '{"name": "a', '{"name": "ab", "age": ', '{"name": "ab", "age": 12']


@pytest.fixture(scope="module")
def tokenizer(hf_gguf_tokenizer):
    return hf_gguf_tokenizer


@pytest.fixture(scope="module")
def matchers(tokenizer):
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=49152)
    g = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(SCHEMA), any_whitespace=False)
    out = []
    for i in range(24):
        m = xgr.GrammarMatcher(g)
        assert m.accept_string(PREFIXES[i % len(PREFIXES)])
        out.append(m)
    return out


def _reference(matchers, rows, shape):
    ref = np.zeros(shape, dtype=np.int32)
    xgr.BatchGrammarMatcher(max_threads=1).batch_fill_next_token_bitmask(matchers, ref, rows)
    return ref


def test_native_fill_is_available_in_this_build():
    assert _NativeBatchFill.create(xgr.BatchGrammarMatcher(max_threads=1)) is not False


@pytest.mark.parametrize("threads", [1, 2])
def test_native_fill_matches_xgrammar(matchers, threads):
    fill = _NativeBatchFill.create(xgr.BatchGrammarMatcher(max_threads=threads))
    rows = [2 * i + 1 for i in range(len(matchers))]   # every other row of a taller mask
    shape = (2 * len(matchers) + 1, 1536)
    got = np.full(shape, 7, dtype=np.int32)
    job = fill.start(matchers, got, rows)
    assert fill.pending
    job.wait()
    assert not fill.pending
    ref = _reference(matchers, rows, shape)
    assert np.array_equal(got[rows], ref[rows])
    assert (got[0::2] == 7).all()                      # rows not asked for: untouched
    assert len({got[r].tobytes() for r in rows}) >= 4  # the states really differ


def test_native_fill_error_names_the_cause_and_the_thread_goes_on(matchers):
    fill = _NativeBatchFill.create(xgr.BatchGrammarMatcher(max_threads=1))
    bad = np.zeros((len(matchers), 1536), dtype=np.float32)
    with pytest.raises(RuntimeError, match="native thread.*int32"):
        fill.start(matchers, bad, list(range(len(matchers)))).wait()
    good = np.zeros((len(matchers), 1536), dtype=np.int32)
    fill.start(matchers, good, list(range(len(matchers)))).wait()
    assert np.array_equal(good, _reference(matchers, list(range(len(matchers))), good.shape))


def test_manager_start_fill_mixes_native_and_inline(tokenizer):
    pytest.importorskip("outlines_core")
    stop = [tokenizer.eos_token_id]
    mgr = StructuredOutputManager(StructuredOutputConfig(backend="xgrammar"), lambda: tokenizer,
                                  49152, stop)
    try:
        handles = [mgr.request_grammar(GuidedDecodingParams(json=SCHEMA, backend=b))
                   for b in ("xgrammar", "outlines")]
        for h in handles:
            h.future.result(timeout=120)
            assert mgr.ready(h)
        ms = [mgr.new_matcher(handles[i % 2]) for i in range(6)]
        toks = tokenizer.encode('{"name": "', add_special_tokens=False)
        for m in ms[2:]:
            verdicts = mgr.accept_tokens([m] * len(toks), toks)
            assert all(ok and not term for ok, term in verdicts)
        pending = mgr.start_fill(ms + [None])
        got = pending.result()
        assert pending.jobs == []
        assert (got[-1] == -1).all()                   # a None row allows everything
        for i, m in enumerate(ms):
            one = np.zeros((1, got.shape[1]), dtype=np.int32)
            m.fill_bitmask(one, 0)
            assert np.array_equal(got[i], one[0]), i
        backend = mgr._backends["xgrammar"]
        assert backend._native                         # the xgrammar rows went native
    finally:
        mgr.shutdown()


def test_feed_takes_verdicts_from_the_mask_and_accepts_with_the_fill(tokenizer):
    """feed() on xgrammar: the verdicts read from the mask the tokens were sampled under,
    and the accepts run natively before the next fill, leave the matchers exactly where
    accepting in Python leaves them (allowed, refused and stop tokens)."""
    stop = [tokenizer.eos_token_id]
    mgr = StructuredOutputManager(StructuredOutputConfig(backend="xgrammar"), lambda: tokenizer,
                                  49152, stop)
    try:
        h = mgr.request_grammar(GuidedDecodingParams(choice=["cat", "dog"], backend="xgrammar"))
        h.future.result(timeout=120)
        cat = tokenizer.encode("cat", add_special_tokens=False)
        fed = [mgr.new_matcher(h) for _ in range(3)]
        ref = [mgr.new_matcher(h) for _ in range(3)]
        for m in fed[2:] + ref[2:]:            # the third is complete: EOS is allowed next
            assert all(v == (True, False) for v in mgr.accept_tokens([m] * len(cat), cat))
        mask = mgr.fill_bitmask(fed)
        # allowed "c...", a token the grammar refuses, the stop token when complete
        refused = tokenizer.encode("zebra", add_special_tokens=False)[0]
        tokens = [cat[0], refused, stop[0]]
        allowed = [bool(mask[j].view(np.uint32)[t >> 5] >> (t & 31) & 1)
                   for j, t in enumerate(tokens)]
        assert allowed == [True, False, True]
        got = mgr.feed(fed, tokens, allowed)
        backend = mgr._backends["xgrammar"]
        assert len(backend._deferred[0]) == 2   # deferred (the refused token needs none)
        pending = mgr.start_fill(fed[:2])       # (a terminated matcher has no next mask)
        assert not backend._deferred[0]
        filled = pending.result()
        want = mgr.accept_tokens(ref, tokens)
        assert got == want == [(True, False), (False, False), (True, True)]
        assert np.array_equal(filled, mgr.fill_bitmask(ref[:2]))
        assert fed[2].is_terminated() and ref[2].is_terminated()
    finally:
        mgr.shutdown()


def test_deferred_accepts_run_before_any_other_use(tokenizer):
    """Accepts fed but not yet run (no fill started) run before accept_tokens or a sync
    fill touches the matchers."""
    mgr = StructuredOutputManager(StructuredOutputConfig(backend="xgrammar"), lambda: tokenizer,
                                  49152, [tokenizer.eos_token_id])
    try:
        h = mgr.request_grammar(GuidedDecodingParams(regex="ab+", backend="xgrammar"))
        h.future.result(timeout=120)
        a, b = (tokenizer.encode(x, add_special_tokens=False)[0] for x in ("a", "b"))
        m = mgr.new_matcher(h)
        assert mgr.feed([m], [a], [True]) == [(True, False)]
        # "b" is only allowed after "a": the deferred accept ran first
        assert mgr.accept_tokens([m], [b]) == [(True, False)]
        m2 = mgr.new_matcher(h)
        mgr.feed([m2], [a], [True])
        ref = mgr.new_matcher(h)
        mgr.accept_tokens([ref], [a])
        assert np.array_equal(mgr.fill_bitmask([m2]), mgr.fill_bitmask([ref]))
    finally:
        mgr.shutdown()
