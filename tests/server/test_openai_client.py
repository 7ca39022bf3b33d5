"""The official `openai` client against the running server (default model, real engine)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from server_helpers import API_KEY, MAX_MODEL_LEN, ROOT_PATH, SERVED_NAMES

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def test_models_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == SERVED_NAMES
    for m in models.data:
        assert m.max_model_len == MAX_MODEL_LEN and m.object == "model"


def test_greedy_completion_equals_llm_generate(client, llm):
    from llmcore import SamplingParams

    expected = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=16),
                            use_tqdm=False)[0]
    for name in SERVED_NAMES:
        r = client.completions.create(model=name, prompt=PROMPT, max_tokens=16, temperature=0)
        assert r.model == SERVED_NAMES[0]
        assert r.object == "text_completion" and r.id.startswith("cmpl-")
        assert r.choices[0].text == expected.outputs[0].text
        assert r.choices[0].finish_reason == expected.outputs[0].finish_reason
        assert r.usage.prompt_tokens == len(expected.prompt_token_ids)
        assert r.usage.completion_tokens == len(expected.outputs[0].token_ids)
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # token-id prompts give the same answer
    r = client.completions.create(model="smol", prompt=list(expected.prompt_token_ids),
                                  max_tokens=16, temperature=0)
    assert r.choices[0].text == expected.outputs[0].text


def test_greedy_chat_equals_llm_generate(client, llm):
    from llmcore import SamplingParams

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    tok = llm.get_tokenizer()
    from llmcore.entrypoints.chat_template import render_chat

    prompt = render_chat(tok.chat_template, messages, add_generation_prompt=True)
    expected = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=12),
                            use_tqdm=False)[0]
    r = client.chat.completions.create(model="smol", messages=messages, max_tokens=12,
                                       temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected.outputs[0].text
    assert r.usage.prompt_tokens == len(expected.prompt_token_ids)


def test_batch_prompts_and_n(client):
    r = client.completions.create(model="smol", prompt=["Hello", "One, two,"], max_tokens=4, n=2,
                                  temperature=0.8, seed=1)
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    assert r.usage.completion_tokens == sum(1 for _ in r.choices) * 4 or \
        r.usage.completion_tokens <= 16
    r = client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=5, n=2)
    assert sorted(c.index for c in r.choices) == [0, 1]


def test_streaming_completion(client, llm):
    from llmcore import SamplingParams

    expected = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=10),
                            use_tqdm=False)[0].outputs[0].text
    chunks = list(client.completions.create(model="smol", prompt=PROMPT, max_tokens=10,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == expected
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert all(c.usage is None for c in chunks[:-1])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert len({c.id for c in chunks}) == 1


def test_streaming_echo_logprobs_n2_matches_unary(client):
    """Stream deltas per choice: with echo + logprobs and two prompts x n=2 (four choices
    interleaved; seeded, so both runs sample alike), each choice's chunks concatenate to
    the unary response's text and logprob tokens, and usage counts each token once."""
    kw = dict(model="smol", prompt=[PROMPT, "1, 2, 3,"], max_tokens=5, temperature=0.7, n=2,
              seed=1, echo=True, logprobs=1)
    unary = client.completions.create(**kw)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True},
                                            **kw))
    texts: dict = {}
    tokens: dict = {}
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] = texts.get(ch.index, "") + ch.text
            tokens.setdefault(ch.index, []).extend(ch.logprobs.tokens if ch.logprobs else [])
    assert sorted(texts) == [0, 1, 2, 3]
    for ch in unary.choices:
        assert texts[ch.index] == ch.text
        assert tokens[ch.index] == ch.logprobs.tokens
    assert chunks[-1].usage.completion_tokens == unary.usage.completion_tokens == 20
    finishes = [ch.index for c in chunks for ch in c.choices if ch.finish_reason]
    assert sorted(finishes) == [0, 1, 2, 3]


def test_streaming_chat_n2(client):
    chunks = list(client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "Say hi"}], max_tokens=6, n=2,
        stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    roles = [c.choices[0].delta.role for c in chunks if c.choices and c.choices[0].delta.role]
    assert roles == ["assistant", "assistant"]
    finishes = [c.choices[0] for c in chunks if c.choices and c.choices[0].finish_reason]
    assert sorted(f.index for f in finishes) == [0, 1]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 12


def test_logprobs(client):
    r = client.completions.create(model="smol", prompt=PROMPT, max_tokens=4, temperature=0,
                                  logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert "".join(lp.tokens) == r.choices[0].text
    assert all(len(t) >= 3 for t in lp.top_logprobs)
    assert all(v <= 0 for v in lp.token_logprobs)
    # greedy: the chosen token is the most likely one
    for tok, top, v in zip(lp.tokens, lp.top_logprobs, lp.token_logprobs):
        assert max(top.values()) == pytest.approx(v, abs=1e-4)
    r = client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=3, logprobs=True, top_logprobs=2, temperature=0)
    content = r.choices[0].logprobs.content
    assert len(content) == 3 and all(len(c.top_logprobs) == 2 for c in content)
    # echo with logprobs covers the prompt too
    r = client.completions.create(model="smol", prompt=PROMPT, max_tokens=2, temperature=0,
                                  echo=True, logprobs=1)
    assert r.choices[0].text.startswith(PROMPT)
    assert r.choices[0].logprobs.token_logprobs[0] is None


def test_stop_and_extras(client):
    r = client.completions.create(model="smol", prompt="1, 2, 3, 4,", max_tokens=20,
                                  temperature=0, stop=[","],
                                  extra_body={"top_k": 5, "min_p": 0.01,
                                              "repetition_penalty": 1.1, "min_tokens": 1,
                                              "include_stop_str_in_output": False,
                                              "skip_special_tokens": True})
    assert r.choices[0].finish_reason == "stop" and "," not in r.choices[0].text
    assert r.choices[0].model_extra.get("stop_reason") == ","


def test_chat_continue_final_message_and_template_refused(client):
    r = client.chat.completions.create(
        model="smol", max_tokens=3, temperature=0,
        messages=[{"role": "user", "content": "Count"}, {"role": "assistant", "content": "1, 2,"}],
        extra_body={"add_generation_prompt": False, "continue_final_message": True})
    assert r.choices[0].message.role == "assistant"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="smol", max_tokens=3,
                                       messages=[{"role": "user", "content": "x"}],
                                       extra_body={"chat_template": "{{ messages }}"})
    assert e.value.body["param"] == "chat_template"


def test_tokenize_detokenize_version_health(server, auth):
    r = httpx.post(server.url + "/tokenize", json={"prompt": PROMPT})
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == MAX_MODEL_LEN
    r2 = httpx.post(server.url + "/detokenize", json={"tokens": body["tokens"]})
    assert r2.json()["prompt"] == PROMPT
    assert httpx.get(server.url + "/version").json()["version"]
    assert httpx.get(server.url + "/health").status_code == 200
    # root path: the same routes answer under the proxy prefix
    r = httpx.get(server.url + ROOT_PATH + "/v1/models", headers=auth)
    assert r.status_code == 200 and r.json()["data"][0]["id"] == "smol"
    schema = httpx.get(server.url + "/openapi.json").json()
    assert schema["servers"][0]["url"] == ROOT_PATH


def test_raw_sse_format(server, auth):
    """vLLM's exact streaming framing: `data: {json}\\n\\n` ... `data: [DONE]\\n\\n`."""
    with httpx.stream("POST", server.url + "/v1/completions", headers=auth, timeout=60,
                      json={"model": "smol", "prompt": "Hi", "max_tokens": 3, "stream": True,
                            "temperature": 0}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    for e in events[:-1]:
        assert e.startswith("data: ")
        obj = json.loads(e[len("data: "):])
        assert obj["object"] == "text_completion" and obj["id"].startswith("cmpl-")
        assert set(obj["choices"][0]) >= {"index", "text", "logprobs", "finish_reason"}


def test_metrics_names(server):
    text = httpx.get(server.url + "/metrics").text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:gpu_cache_usage_perc", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_bucket",
                 "vllm:e2e_request_latency_seconds_count", "vllm:inter_token_latency_seconds_bucket",
                 "vllm:time_per_output_token_seconds_bucket"):
        assert name in text, name


def test_beam_search_completion_equals_llm_generate(client, llm):
    """use_beam_search runs above the engine core (AsyncLLM's beam driver)."""
    from llmcore import SamplingParams

    expected = llm.generate([PROMPT], SamplingParams(n=2, best_of=3, use_beam_search=True,
                                                     temperature=0, max_tokens=8),
                            use_tqdm=False)[0]
    r = client.completions.create(model="smol", prompt=PROMPT, max_tokens=8, temperature=0, n=2,
                                  best_of=3, extra_body={"use_beam_search": True})
    assert [c.text for c in r.choices] == [c.text for c in expected.outputs]
    assert [c.finish_reason for c in r.choices] == [c.finish_reason for c in expected.outputs]
    assert r.usage.completion_tokens == sum(len(c.token_ids) for c in expected.outputs)
