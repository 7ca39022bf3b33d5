"""Every bad input gets its status and OpenAI's error shape; the server keeps serving."""

from __future__ import annotations

import httpx
import pytest

from server_helpers import API_KEY, MAX_MODEL_LEN

AUTH = {"Authorization": f"Bearer {API_KEY}"}
MSG = [{"role": "user", "content": "hi"}]


def _check_error(r: httpx.Response, status: int, param=None):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if param is not None:
        assert err["param"] == param, err


BAD_COMPLETIONS = [
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -5}, "top_k"),
    ({"min_p": 2}, "min_p"),
    ({"n": 0}, "n"),
    ({"n": 100000}, "n"),
    ({"best_of": 1, "n": 2}, "best_of"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -3}, "max_tokens"),
    ({"min_tokens": -1}, "min_tokens"),
    ({"presence_penalty": 5}, "presence_penalty"),
    ({"frequency_penalty": -5}, "frequency_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"logprobs": 100}, "logprobs"),
    ({"logprobs": -1}, "logprobs"),
    ({"prompt_logprobs": 100}, "prompt_logprobs"),
    ({"stop_token_ids": [10**7]}, "stop_token_ids"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"99999999": 1}}, "logit_bias"),
    ({"seed": 2**64}, "seed"),
    ({"temperature": "hot"}, "temperature"),
    ({"model": "no-such-model"}, "model"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": [60000]}, "prompt"),
    ({"prompt": [-1]}, "prompt"),
    ({"prompt": "hi " * (MAX_MODEL_LEN + 10)}, "prompt"),
    ({"max_tokens": MAX_MODEL_LEN}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"use_beam_search": True, "stream": True, "best_of": 2, "temperature": 0}, "use_beam_search"),
    ({"guided_json": {"type": "no-such-type"}}, "guided_json"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"suffix": "x"}, "suffix"),
]


@pytest.mark.parametrize("patch,param", BAD_COMPLETIONS, ids=[p for _, p in BAD_COMPLETIONS])
def test_bad_completion_request(server, patch, param):
    body = {"model": "smol", "prompt": "Hello", "max_tokens": 4, **patch}
    _check_error(httpx.post(server.url + "/v1/completions", json=body, headers=AUTH, timeout=60),
                 400, param)


BAD_CHAT = [
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"temperature": -0.5}, "temperature"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
    # tools without tool_choice mean "auto", which needs --enable-auto-tool-choice
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {}}], "tool_choice": "none"}, "tools"),
    ({"chat_template": "{{ 1 }}"}, "chat_template"),
    ({"add_generation_prompt": True, "continue_final_message": True}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
    ({"messages": [{"role": "user", "content": "hi " * (MAX_MODEL_LEN + 10)}]}, "messages"),
    ({"model": "gpt-4"}, "model"),
]


@pytest.mark.parametrize("patch,param", BAD_CHAT, ids=[p for _, p in BAD_CHAT])
def test_bad_chat_request(server, patch, param):
    body = {"model": "smol", "messages": MSG, "max_tokens": 4, **patch}
    _check_error(httpx.post(server.url + "/v1/chat/completions", json=body, headers=AUTH,
                            timeout=60), 400, param)


def test_malformed_json_and_wrong_types(server):
    for content in (b"{not json", b"", b"[]", b'"str"', b"\xff\xfe"):
        r = httpx.post(server.url + "/v1/completions", content=content, timeout=30,
                       headers={**AUTH, "content-type": "application/json"})
        _check_error(r, 400)
    r = httpx.post(server.url + "/v1/chat/completions", content=b'{"messages": [', timeout=30,
                   headers={**AUTH, "content-type": "application/json"})
    _check_error(r, 400)


def test_not_found_and_method_not_allowed(server):
    _check_error(httpx.get(server.url + "/v1/nothing-here", headers=AUTH), 404)
    _check_error(httpx.get(server.url + "/nothing-here"), 404)
    _check_error(httpx.get(server.url + "/v1/completions", headers=AUTH), 405)
    _check_error(httpx.post(server.url + "/health"), 405)


def test_tokenize_errors(server):
    _check_error(httpx.post(server.url + "/detokenize", json={"tokens": [10**6]}), 400, "tokens")
    _check_error(httpx.post(server.url + "/tokenize", json={"model": "x", "prompt": "a"}), 400,
                 "model")
    _check_error(httpx.post(server.url + "/tokenize", json={}), 400)


def test_still_serving_after_errors(server):
    for patch, _ in BAD_COMPLETIONS[:5]:
        httpx.post(server.url + "/v1/completions", json={"model": "smol", "prompt": "x", **patch},
                   headers=AUTH, timeout=60)
    r = httpx.post(server.url + "/v1/completions", headers=AUTH, timeout=60,
                   json={"model": "smol", "prompt": "Hello", "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    assert httpx.get(server.url + "/health").status_code == 200


def test_bad_request_in_stream_is_400_before_streaming(server):
    r = httpx.post(server.url + "/v1/completions", headers=AUTH, timeout=60,
                   json={"model": "smol", "prompt": "x", "stream": True, "temperature": -1})
    _check_error(r, 400, "temperature")
