"""SmolLM2-135M-Instruct (the default GGUF, and that GGUF converted to a HF folder) over a
paged KV cache vs HF transformers (fp32, CPU): greedy tokens, logprobs, chunked prefill."""

from __future__ import annotations

import pytest
import torch

from llmcore.config import EngineArgs
from llmcore.model_loader import get_model, load_model_config
from paged_kv_helper import PagedRunner

NEW_TOKENS = 32

_TEXTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village by the sea, there lived",
    "1, 2, 3, 4, 5,",
    "Translate to French: I like apples.",
    "The three primary colors are",
]
_CHATS = [
    "What is the boiling point of water in Celsius?",
    "Write a haiku about autumn leaves.",
]


@pytest.fixture(scope="session")
def smollm2_prompts(hf_gguf_tokenizer) -> list[list[int]]:
    tok = hf_gguf_tokenizer
    prompts = [tok.encode(t) for t in _TEXTS]
    for q in _CHATS:
        ids = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=True,
                                      add_generation_prompt=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        prompts.append(list(ids))
    assert len(prompts) >= 8 and len({len(p) for p in prompts}) > 3
    return prompts


@pytest.fixture(scope="session")
def hf_logprobs(hf_gguf_model):
    """HF transformers' log-softmax at every position of a token sequence (one unpadded
    sequence per forward), memoised per sequence."""
    memo = {}

    def get(tokens: list[int]) -> torch.Tensor:
        key = tuple(tokens)
        if key not in memo:
            with torch.inference_mode():
                logits = hf_gguf_model(input_ids=torch.tensor([tokens])).logits[0].float()
            memo[key] = torch.log_softmax(logits, -1)
        return memo[key]

    return get


@pytest.fixture(scope="module")
def gguf_model(default_gguf_path):
    mc = load_model_config(EngineArgs(), "cpu")
    assert mc.is_gguf and mc.model_path == default_gguf_path
    return get_model(mc, "cpu")


@pytest.fixture(scope="module")
def hf_dir_model(smollm2_hf_dir):
    mc = load_model_config(EngineArgs(model=smollm2_hf_dir), "cpu")
    assert not mc.is_gguf and mc.architecture == "LlamaForCausalLM"
    return get_model(mc, "cpu")


def _check_against_hf(model, prompts, hf_logprobs):
    """Greedy over the paged cache (all prompts prefilled in one step, then batched decode
    steps) vs HF: HF's argmax after every prefix of the continuation is our token (so HF's
    greedy generate produces the same continuation), and HF's top-5 logprobs match."""
    runner = PagedRunner(model, num_blocks=128, block_size=16)
    outs, logits = runner.greedy(prompts, NEW_TOKENS, return_logits=True)
    for i, prompt in enumerate(prompts):
        n = len(prompt)
        ref = hf_logprobs(prompt + outs[i][:-1])[n - 1:]
        assert ref.shape[0] == NEW_TOKENS
        hf_greedy = ref.argmax(-1).tolist()
        assert outs[i] == hf_greedy, f"prompt {i}: greedy tokens differ from HF"
        mine = torch.log_softmax(torch.stack(logits[i]), -1)
        top = ref.topk(5, dim=-1).indices
        diff = (mine.gather(1, top) - ref.gather(1, top)).abs().max().item()
        assert diff < 1e-3, f"prompt {i}: top-5 logprobs differ from HF by {diff}"


def test_gguf_matches_hf(gguf_model, smollm2_prompts, hf_logprobs):
    _check_against_hf(gguf_model, smollm2_prompts, hf_logprobs)


def test_hf_folder_matches_hf(hf_dir_model, smollm2_prompts, hf_logprobs):
    _check_against_hf(hf_dir_model, smollm2_prompts, hf_logprobs)


def test_hf_generate_agrees(hf_gguf_model, gguf_model, smollm2_prompts):
    """One literal HF `generate` (greedy, EOS not stopping) for a short check."""
    prompt = smollm2_prompts[0]
    n_new = 8
    with torch.inference_mode():
        out = hf_gguf_model.generate(torch.tensor([prompt]), max_new_tokens=n_new,
                                     do_sample=False, eos_token_id=-1, pad_token_id=0)
    ref = out[0, len(prompt):].tolist()
    mine = PagedRunner(gguf_model, num_blocks=16).greedy([prompt], n_new)[0]
    assert mine == ref


def test_gguf_and_hf_folder_weights_equal(gguf_model, hf_dir_model):
    a = dict(gguf_model.named_parameters())
    b = dict(hf_dir_model.named_parameters())
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_chunked_prefill_equals_one_shot(gguf_model, smollm2_prompts):
    """A prompt prefilled in chunks (cached prefix + chunk, mixed with other sequences'
    decodes and fresh prefills) gives the same logits as a one-shot prefill."""
    long_prompt = smollm2_prompts[2] + smollm2_prompts[6] + smollm2_prompts[1]
    assert len(long_prompt) > 40
    one = PagedRunner(gguf_model, num_blocks=64, block_size=16, seed=1)
    ref_logits = one.step([("a", long_prompt)])
    ref_next = [int(ref_logits.argmax())]
    for _ in range(4):
        ref_next.append(int(one.step([], [("a", ref_next[-1])]).argmax()))

    chunked = PagedRunner(gguf_model, num_blocks=64, block_size=16, seed=2)
    other = smollm2_prompts[0]
    cuts = [0, 7, 23, 24, 40, len(long_prompt)]  # chunk boundaries inside and across blocks
    other_tok = int(chunked.step([("b", other)]).argmax())
    logits = None
    for s, e in zip(cuts[:-1], cuts[1:]):
        # the chunk, a fresh prefill of another sequence, and a decode, in one step
        fresh = (("c", s), smollm2_prompts[3][: 3 + s % 5])
        logits = chunked.step([("a", long_prompt[s:e]), fresh], [("b", other_tok)])
        other_tok = int(logits[2].argmax())
        chunked.free_seq(("c", s))
    torch.testing.assert_close(logits[0], ref_logits[0], atol=2e-4, rtol=1e-4)
    nxt = [int(logits[0].argmax())]
    for _ in range(4):
        nxt.append(int(chunked.step([], [("a", nxt[-1])]).argmax()))
    assert nxt == ref_next


def test_logits_rows_only(gguf_model, smollm2_prompts):
    runner = PagedRunner(gguf_model, num_blocks=32, block_size=16)
    with torch.inference_mode():
        logits = runner.step([("x", smollm2_prompts[0]), ("y", smollm2_prompts[1])])
    assert logits.shape == (2, 49152) and logits.dtype == torch.float32
