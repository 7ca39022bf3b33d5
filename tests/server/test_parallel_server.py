"""The OpenAI server with worker processes (-tp 2, -pp 2) on a tiny random Llama answers
the official `openai` client with the single-process engine's greedy text, and SIGTERM
leaves no worker process behind."""

from __future__ import annotations

import os
import select
import shutil

import openai
import pytest
import torch

_CFG = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rms_norm_eps=1e-6, tie_word_embeddings=False)
_PROMPTS = [list(range(3, 8)), list(range(40, 73))]
_FLAGS = ["--dtype", "float32", "--device", "cpu", "--max-model-len", "128",
          "--cpu-kv-cache-space", "0.01", "--swap-space", "0", "--seed", "0",
          "--served-model-name", "tiny"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> str:
    """A tiny random Llama with SmolLM2's tokenizer files (its generated ids, < 256, are
    byte-level tokens that decode to text)."""
    import transformers as tf

    from llmcore.config import EngineArgs
    from llmcore.model_loader import load_model_config

    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**_CFG)).float().eval()
    out = str(tmp_path_factory.mktemp("tiny_llama_server"))
    model.save_pretrained(out)
    converted = load_model_config(EngineArgs(), "cpu").weights_path   # the default's HF copy
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(converted, name), out)
    return out


@pytest.fixture(scope="module")
def one_process_texts(tiny_folder) -> list:
    from llmcore import LLM, SamplingParams

    llm = LLM(model=tiny_folder, dtype="float32", device="cpu", max_model_len=128,
              cpu_kv_cache_space=0.01, seed=0)
    outs = llm.generate(prompt_token_ids=_PROMPTS, use_tqdm=False,
                        sampling_params=SamplingParams(temperature=0, max_tokens=16,
                                                       ignore_eos=True))
    texts = [o.outputs[0].text for o in outs]
    assert all(len(t) >= 4 for t in texts), texts   # something to compare
    return texts


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in os.listdir(f"/proc/{p}/task"):
            try:
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except FileNotFoundError:
                continue
            out += kids
            todo += kids
    return out


@pytest.mark.parametrize("parallel", [["-tp", "2"], ["-pp", "2"]])
def test_parallel_server_answers_like_one_process_and_sigterm_stops_workers(
        start_server, tiny_folder, one_process_texts, parallel, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    srv = start_server("--model", tiny_folder, *_FLAGS, *parallel)
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=120)
    for prompt, want in zip(_PROMPTS, one_process_texts):
        r = client.completions.create(model="tiny", prompt=prompt, max_tokens=16,
                                      temperature=0, extra_body={"ignore_eos": True})
        assert r.choices[0].text == want
        assert r.usage.completion_tokens == 16
    procs = _descendants(srv.proc.pid)          # engine core + its 2 workers
    assert len(procs) >= 3, procs
    fds = [os.pidfd_open(p) for p in procs]
    try:
        srv.stop()                              # SIGTERM
        pending = set(fds)
        while pending:                          # pidfds turn readable at exit: no polling
            ready, _, _ = select.select(list(pending), [], [], 120)
            assert ready, f"{len(pending)} of {procs} still running after SIGTERM"
            pending -= set(ready)
    finally:
        for fd in fds:
            os.close(fd)
