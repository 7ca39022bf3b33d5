"""Spec checks (bounded, before any compile) and the manager: cache by (backend, spec),
compile failures and time limits failing the request, never the engine."""

from __future__ import annotations

import threading

import pytest

from llmcore import GuidedDecodingParams
from llmcore.config.engine_config import StructuredOutputConfig
from llmcore.structured_output import manager as manager_mod
from llmcore.structured_output.backend import (GrammarCompileError, GrammarMatcher,
                                               StructuredOutputBackend)
from llmcore.structured_output.spec import spec_from_params


@pytest.mark.parametrize("kwargs, match", [
    (dict(json={"type": "no-such-type"}), "guided_decoding.json is not a valid JSON schema"),
    (dict(json="[1, 2"), "guided_decoding.json is not valid JSON"),
    (dict(json="[1, 2]"), "guided_decoding.json must be a JSON schema object"),
    (dict(json={"type": "array", "maxItems": 10 ** 6}), "too large"),
    (dict(json="x" * 200_000), "too large"),
    (dict(regex="(a"), "guided_decoding.regex is not a valid regular expression"),
    (dict(regex="(a{1000}){1000}"), "guided_decoding.regex is too large"),
    (dict(regex="((ab|cd){200}){200}"), "too large"),
    (dict(grammar="root ::= "), "guided_decoding.grammar is not a valid EBNF"),
    (dict(choice=["a", ""]), "guided_decoding.choice"),
    (dict(regex="a", whitespace_pattern="("), "guided_decoding.whitespace_pattern"),
])
def test_bad_specs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        spec_from_params(GuidedDecodingParams(**kwargs))


def test_canonical_spec_keeps_field_order():
    a = spec_from_params(GuidedDecodingParams(json={"b": 1, "a": 2}))
    b = spec_from_params(GuidedDecodingParams(json='{"b": 1,  "a": 2}'))
    assert a.key == b.key and a.value.index('"b"') < a.value.index('"a"')
    assert spec_from_params(GuidedDecodingParams(regex=r"a{1,100}")).kind == "regex"


class _Matcher(GrammarMatcher):
    def accept_token(self, token_id):
        return True

    def fill_bitmask(self, bitmask, row):
        bitmask[row, 0] = 1

    def rollback(self, num_tokens):
        pass

    def is_terminated(self):
        return False


class _FakeBackend(StructuredOutputBackend):
    """Counts compiles; 'slow' specs block until released; 'bad' ones fail."""

    compiles: list = []
    release = threading.Event()

    def compile(self, spec):
        _FakeBackend.compiles.append(spec.key)
        if spec.value == "slow":
            _FakeBackend.release.wait()
        if spec.value == "bad":
            raise GrammarCompileError("guided_decoding.regex: cannot compile it")
        return spec.value

    def new_matcher(self, compiled):
        return _Matcher()


@pytest.fixture
def manager(monkeypatch):
    monkeypatch.setattr(manager_mod, "get_backend_class", lambda name: _FakeBackend)
    _FakeBackend.compiles = []
    _FakeBackend.release.clear()

    def make(**cfg):
        return manager_mod.StructuredOutputManager(
            StructuredOutputConfig(backend="xgrammar", **cfg), lambda: object(), 70, [2])
    yield make
    _FakeBackend.release.set()


def _ready(mgr, handle):
    handle.future.result()        # wait on the compile itself (an event, no timer)
    return mgr.ready(handle)


def test_cache_by_backend_and_spec(manager):
    mgr = manager()
    h1 = mgr.request_grammar(GuidedDecodingParams(regex="ab"))
    h2 = mgr.request_grammar(GuidedDecodingParams(regex="ab"))
    h3 = mgr.request_grammar(GuidedDecodingParams(regex="ab", backend="outlines"))
    assert _ready(mgr, h1) and _ready(mgr, h2) and _ready(mgr, h3)
    assert h1.future is h2.future and h3.future is not h1.future
    assert len(_FakeBackend.compiles) == 2
    bitmask = mgr.fill_bitmask([mgr.new_matcher(h1), mgr.new_matcher(h2)])
    assert bitmask.shape == (2, 3) and bitmask[:, 0].tolist() == [1, 1]
    mgr.shutdown()


def test_compile_error_fails_request(manager):
    mgr = manager()
    h = mgr.request_grammar(GuidedDecodingParams(regex="bad"))
    h.future.exception()
    with pytest.raises(ValueError, match="guided_decoding.regex: cannot compile"):
        mgr.ready(h)
    mgr.shutdown()


def test_compile_past_time_limit_fails_request(manager):
    mgr = manager(compile_timeout_s=-1.0)      # the deadline has passed at once
    h = mgr.request_grammar(GuidedDecodingParams(regex="slow"))
    with pytest.raises(ValueError, match="guided_decoding.regex is too complex"):
        mgr.ready(h)
    _FakeBackend.release.set()
    mgr.shutdown()


def test_none_matcher_allows_everything_and_rows_keep_their_order(manager):
    """A row whose sequence stopped while in flight (None) allows every token; the rows of
    live matchers are filled by their backend's batch fill at their own index."""
    mgr = manager()
    h = mgr.request_grammar(GuidedDecodingParams(regex="ab"))
    assert _ready(mgr, h)
    bitmask = mgr.fill_bitmask([None, mgr.new_matcher(h), None])
    assert bitmask[0].tolist() == [-1, -1, -1] and bitmask[2].tolist() == [-1, -1, -1]
    assert bitmask[1].tolist() == [1, 0, 0]
    mgr.shutdown()


def test_repeated_schema_is_checked_once(monkeypatch):
    """The meta-schema check (~10 ms of Python) runs once per distinct schema; a bad schema
    still fails every request that sends it."""
    from llmcore.structured_output import spec as spec_mod
    calls = []
    real = spec_mod._check_schema
    monkeypatch.setattr(spec_mod, "_check_schema", lambda s: (calls.append(1), real(s)))
    spec_mod._check_result.cache_clear()
    schema = {"type": "object", "properties": {"q": {"type": "integer"}}}
    for _ in range(3):
        spec_from_params(GuidedDecodingParams(json=schema))
    assert len(calls) == 1
    for _ in range(2):
        with pytest.raises(ValueError, match="not a valid JSON schema"):
            spec_from_params(GuidedDecodingParams(json={"type": 12}))
