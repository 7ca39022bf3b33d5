"""gRPC request messages under fuzzing: random bytes parsed as the request messages,
and random field values through the servicer's conversion code (grpc/convert.py).
Parsing raises protobuf's DecodeError or yields a message; conversion yields
SamplingParams or an RpcError(INVALID_ARGUMENT) naming the field - nothing else."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcore.entrypoints.grpc._stubs import pb2
from llmcore.entrypoints.grpc.convert import RpcError, sampling_params_from_proto

REQUESTS = [pb2.GenerateRequest, pb2.ChatRequest, pb2.TokenizeRequest, pb2.DetokenizeRequest,
            pb2.SamplingParams]

_f32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
_u32 = st.integers(0, 2**32 - 1)
_fields = st.fixed_dictionaries({}, optional={
    "n": _u32, "best_of": _u32, "presence_penalty": _f32, "frequency_penalty": _f32,
    "repetition_penalty": _f32, "temperature": _f32, "top_p": _f32,
    "top_k": st.integers(-2**31, 2**31 - 1), "min_p": _f32, "seed": st.integers(-2**63, 2**63 - 1),
    "use_beam_search": st.booleans(), "length_penalty": _f32,
    "early_stopping": st.text(max_size=8) | st.sampled_from(["true", "false", "never"]),
    "stop": st.lists(st.text(max_size=8), max_size=3), "stop_token_ids": st.lists(_u32, max_size=3),
    "include_stop_str_in_output": st.booleans(), "ignore_eos": st.booleans(), "max_tokens": _u32,
    "min_tokens": _u32, "logprobs": _u32, "prompt_logprobs": _u32, "detokenize": st.booleans(),
    "skip_special_tokens": st.booleans(), "spaces_between_special_tokens": st.booleans(),
    "truncate_prompt_tokens": _u32, "logit_bias": st.dictionaries(_u32, _f32, max_size=3),
})


def _convert(msg, has_msg=True):
    try:
        sampling_params_from_proto(msg, has_msg=has_msg)
    except RpcError as e:
        assert e.code == grpc.StatusCode.INVALID_ARGUMENT
        assert e.message.startswith("sampling_params"), e.message


@settings(max_examples=200, deadline=None)
@given(cls=st.sampled_from(REQUESTS), raw=st.binary(max_size=200))
def test_random_bytes_as_requests(cls, raw):
    try:
        msg = cls.FromString(raw)
    except DecodeError:
        return
    if cls is pb2.SamplingParams:
        _convert(msg)
    elif cls in (pb2.GenerateRequest, pb2.ChatRequest):
        _convert(msg.sampling_params, has_msg=msg.HasField("sampling_params"))


@settings(max_examples=200, deadline=None)
@given(fields=_fields)
def test_random_sampling_params(fields):
    _convert(pb2.SamplingParams(**fields))


@pytest.mark.parametrize("fields", [{"temperature": float("nan")}, {"top_p": float("inf")},
                                    {"logit_bias": {1: float("nan")}}, {"n": 2**32 - 1}])
def test_odd_values_are_invalid_argument(fields):
    with pytest.raises(RpcError) as e:
        sampling_params_from_proto(pb2.SamplingParams(**fields))
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
