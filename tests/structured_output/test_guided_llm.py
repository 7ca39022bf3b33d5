"""Guided decoding end to end with the real SmolLM2 weights: JSON that validates against its
schema, regex / choice / EBNF outputs that match, on every backend that supports them."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from llmcore import GuidedDecodingParams, SamplingParams

BACKENDS = ["xgrammar", "outlines", "lm-format-enforcer"]

SCHEMAS = {
    "person": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"]},
    "nested": {"type": "object", "properties": {
        "user": {"type": "object", "properties": {
            "id": {"type": "integer", "minimum": 0, "maximum": 9999},
            "email": {"type": "string", "maxLength": 24}}, "required": ["id", "email"]},
        "active": {"type": "boolean"}}, "required": ["user", "active"]},
    "array": {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10},
                 "minItems": 1, "maxItems": 3}}, "required": ["tags"]},
    "enums": {"type": "object", "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "size": {"type": "string", "enum": ["S", "M", "L"]}}, "required": ["color", "size"]},
    "numbers": {"type": "object", "properties": {
        "price": {"type": "number", "minimum": 0, "maximum": 1000},
        "qty": {"type": "integer", "minimum": 1, "maximum": 10}}, "required": ["price", "qty"]},
    "optional": {"type": "object", "properties": {
        "title": {"type": "string", "maxLength": 20},
        "subtitle": {"type": "string", "maxLength": 20}}, "required": ["title"]},
    "array_of_objects": {"type": "object", "properties": {
        "items": {"type": "array", "minItems": 1, "maxItems": 2, "items": {
            "type": "object", "properties": {
                "name": {"type": "string", "maxLength": 10},
                "done": {"type": "boolean"}},
            "required": ["name", "done"]}}}, "required": ["items"]},
    "bool_null": {"type": "object", "properties": {
        "ok": {"type": "boolean"}, "error": {"type": "null"}}, "required": ["ok", "error"]},
    "const_codes": {"type": "object", "properties": {
        "status": {"const": "done"},
        "codes": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99},
                  "maxItems": 3}}, "required": ["status", "codes"]},
    "deep": {"type": "object", "properties": {
        "a": {"type": "object", "properties": {
            "b": {"type": "object", "properties": {
                "c": {"type": "integer", "minimum": 0, "maximum": 100}}, "required": ["c"]}},
            "required": ["b"]}}, "required": ["a"]},
    "any_of": {"type": "object", "properties": {
        "value": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 50},
                            {"type": "string", "maxLength": 5}]}}, "required": ["value"]},
}


# Keywords a backend's library does not enforce (outlines-core and lm-format-enforcer emit
# any integer / number for a bounded one): outputs are validated without them there.
UNENFORCED = {"outlines": ("minimum", "maximum"), "lm-format-enforcer": ("minimum", "maximum")}


def _without(schema, keys):
    if isinstance(schema, dict):
        return {k: _without(v, keys) for k, v in schema.items() if k not in keys}
    if isinstance(schema, list):
        return [_without(v, keys) for v in schema]
    return schema


def _greedy(guided: GuidedDecodingParams, max_tokens: int = 80) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, guided_decoding=guided)


@pytest.mark.parametrize("backend", BACKENDS)
def test_json_schemas_validate(guided_llm, backend):
    names = list(SCHEMAS)
    prompts = [f"Write a JSON object ({n.replace('_', ' ')}):\n" for n in names]
    params = [_greedy(GuidedDecodingParams(json=SCHEMAS[n], backend=backend)) for n in names]
    outs = guided_llm.generate(prompts, params, use_tqdm=False)
    for name, out in zip(names, outs):
        o = out.outputs[0]
        assert o.finish_reason == "stop", (backend, name, o.text)
        value = json.loads(o.text)
        jsonschema.validate(value, _without(SCHEMAS[name], UNENFORCED.get(backend, ())))
        if backend == "xgrammar":
            jsonschema.validate(value, SCHEMAS[name])


@pytest.mark.parametrize("backend", BACKENDS)
def test_regex_choice_json_object(guided_llm, backend):
    regexes = [r"\d{3}-\d{4}", r"(yes|no), because [a-z ]{1,20}\.", r"[A-Z][a-z]{2,8}"]
    choices = ["Paris", "London", "Berlin"]
    prompts = ["Phone:", "Answer:", "Name:", "The capital of France is", "JSON:"]
    params = [_greedy(GuidedDecodingParams(regex=r, backend=backend), 40) for r in regexes]
    params.append(_greedy(GuidedDecodingParams(choice=choices, backend=backend), 10))
    params.append(_greedy(GuidedDecodingParams(json_object=True, backend=backend), 60))
    outs = [o.outputs[0] for o in guided_llm.generate(prompts, params, use_tqdm=False)]
    for r, o in zip(regexes, outs):
        assert o.finish_reason == "stop" and re.fullmatch(r, o.text), (backend, r, o.text)
    assert outs[3].text in choices and outs[3].finish_reason == "stop"
    if outs[4].finish_reason == "stop":   # a free JSON object may not end in 60 tokens
        assert isinstance(json.loads(outs[4].text), dict)
    else:
        assert outs[4].finish_reason == "length" and outs[4].text.lstrip().startswith("{")


def test_ebnf_grammar_xgrammar(guided_llm):
    grammar = ('root ::= greeting " " name "!"\n'
               'greeting ::= "Hello" | "Hi"\n'
               'name ::= [A-Z] [a-z]{1,8}\n')
    out = guided_llm.generate(["Greet someone:"], _greedy(GuidedDecodingParams(
        grammar=grammar, backend="xgrammar"), 20), use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "stop"
    assert re.fullmatch(r"(Hello|Hi) [A-Z][a-z]{1,8}!", out.text), out.text


@pytest.mark.parametrize("backend", ["outlines", "lm-format-enforcer"])
def test_grammar_unsupported_backend_raises(guided_llm, backend):
    with pytest.raises(ValueError, match="guided_decoding.grammar"):
        guided_llm.generate(["x"], _greedy(GuidedDecodingParams(
            grammar='root ::= "a"', backend=backend), 4), use_tqdm=False)


def test_length_when_grammar_cannot_finish(guided_llm):
    out = guided_llm.generate(["Count:"], _greedy(GuidedDecodingParams(
        regex=r"a{30}", backend="xgrammar"), 5), use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "length"
    assert len(out.token_ids) == 5 and re.fullmatch(r"a*", out.text)


def test_mixed_batch_and_n(guided_llm):
    """Constrained rows next to free ones (and n > 1 samples, each with its own matcher)."""
    free = SamplingParams(temperature=0, max_tokens=12)
    guided = SamplingParams(temperature=0.9, seed=7, n=3, max_tokens=20,
                            guided_decoding=GuidedDecodingParams(regex=r"[0-9]{2,4}",
                                                                 backend="xgrammar"))
    ref = guided_llm.generate(["Once upon a time"], free, use_tqdm=False)[0].outputs[0].text
    outs = guided_llm.generate(["Once upon a time", "A number:"], [free, guided],
                               use_tqdm=False)
    assert outs[0].outputs[0].text == ref     # the free row is untouched by the mask
    assert len(outs[1].outputs) == 3
    for o in outs[1].outputs:
        assert re.fullmatch(r"[0-9]{2,4}", o.text) and o.finish_reason == "stop", o.text


def test_bad_specs_raise_before_queueing(guided_llm):
    bad = [GuidedDecodingParams(json={"type": "no-such-type"}),
           GuidedDecodingParams(regex="(unclosed"),
           GuidedDecodingParams(regex="(a{1000}){1000}"),
           GuidedDecodingParams(grammar="root ::= "),
           GuidedDecodingParams(json='{"type": "string", "maxLength": 1000000}')]
    for g in bad:
        with pytest.raises(ValueError, match=f"guided_decoding.{g.kind}"):
            guided_llm.generate(["x"], _greedy(g, 4), use_tqdm=False)
    # the engine still serves
    out = guided_llm.generate(["x"], _greedy(GuidedDecodingParams(choice=["ok"]), 4),
                              use_tqdm=False)[0].outputs[0]
    assert out.text == "ok"


def test_async_scheduling_same_outputs(guided_llm):
    """The pipelined loop (forward of step k launched before step k-1's tokens are read,
    sampling deferred until the mask is filled) gives the sync loop's outputs."""
    from llmcore import LLM
    prompts = ["Write a JSON object (person):\n", "Phone:", "Once upon a time", "Pick one:",
               "Pick again:"]
    # the last one's grammar ends before min_tokens lets EOS through: a row with every token
    # masked, whose token the grammar refuses (the sequence stops there)
    refused = SamplingParams(temperature=0, max_tokens=8, min_tokens=6, guided_decoding=(
        GuidedDecodingParams(choice=["cat", "dog"], backend="xgrammar")))
    params = [_greedy(GuidedDecodingParams(json=SCHEMAS["person"], backend="xgrammar"), 40),
              _greedy(GuidedDecodingParams(regex=r"\d{3}-\d{4}", backend="outlines"), 16),
              SamplingParams(temperature=0, max_tokens=10),
              _greedy(GuidedDecodingParams(choice=["cat", "dog"], backend="xgrammar"), 6),
              refused]
    expected = [(o.outputs[0].text, o.outputs[0].finish_reason)
                for o in guided_llm.generate(prompts, params, use_tqdm=False)]
    llm = LLM(max_model_len=512, cpu_kv_cache_space=0.25, swap_space=0, async_scheduling=True)
    try:
        engine = llm.llm_engine
        assert engine.async_scheduling
        executor = engine.core.executor
        deferred = []
        sample_deferred = executor.sample_deferred
        executor.sample_deferred = lambda *a: deferred.append(a) or sample_deferred(*a)
        got = [(o.outputs[0].text, o.outputs[0].finish_reason)
               for o in llm.generate(prompts, params, use_tqdm=False)]
        assert len(deferred) >= 10   # guided steps ran pipelined, sampling deferred
    finally:
        llm.llm_engine.core.shutdown()
    assert got == expected
