"""Guided decoding over gRPC: SamplingParams.guided_decoding constrains the output; a bad
or too large constraint, or one the backend cannot compile, is INVALID_ARGUMENT naming
sampling_params.guided_decoding.<field>; the server keeps serving."""

from __future__ import annotations

import json
import re

import grpc
import pytest

from grpc_testlib import FAKE

pytestmark = pytest.mark.skipif(FAKE, reason="guided decoding needs the real engine")


def _run(client, pb2, guided, max_tokens=24):
    req = pb2.GenerateRequest(text="Answer:", sampling_params=pb2.SamplingParams(
        temperature=0.0, max_tokens=max_tokens, guided_decoding=guided))
    r = client.GenerateUnary(req)
    return r.outputs[0]


def test_guided_outputs(client, stubs):
    pb2, _ = stubs
    out = _run(client, pb2, pb2.GuidedDecoding(choice=pb2.ChoiceList(choices=["yes", "no"])))
    assert out.text in ("yes", "no") and out.finish_reason == pb2.FINISH_REASON_STOP
    out = _run(client, pb2, pb2.GuidedDecoding(regex=r"[0-9]{2}-[a-z]{2}", backend="xgrammar"))
    assert re.fullmatch(r"[0-9]{2}-[a-z]{2}", out.text)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    out = _run(client, pb2, pb2.GuidedDecoding(json_schema=json.dumps(schema),
                                               backend="xgrammar"))
    assert isinstance(json.loads(out.text)["ok"], bool)


@pytest.mark.parametrize("guided, field", [
    (dict(regex="(unclosed"), "guided_decoding.regex"),
    (dict(regex="(a{1000}){1000}"), "guided_decoding.regex"),
    (dict(json_schema="{not json"), "guided_decoding.json_schema"),
    (dict(json_schema='{"type": 7}'), "guided_decoding.json_schema"),
    (dict(grammar="root ::= "), "guided_decoding.grammar"),
    (dict(regex="a", backend="nope"), "guided_decoding.backend"),
    (dict(backend="xgrammar"), "guided_decoding"),
    # the server's default backend (outlines) has no grammars: refused by the core
    (dict(grammar='root ::= "a"'), "guided_decoding.grammar"),
])
def test_invalid_guided(client, stubs, guided, field):
    pb2, _ = stubs
    with pytest.raises(grpc.RpcError) as ei:
        _run(client, pb2, pb2.GuidedDecoding(**guided), 4)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"sampling_params.{field}" in ei.value.details(), ei.value.details()
    out = _run(client, pb2, pb2.GuidedDecoding(choice=pb2.ChoiceList(choices=["ok"])), 4)
    assert out.text == "ok"
