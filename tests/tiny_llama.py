"""A tiny random Llama saved as an HF folder (fp32): 4 attention heads and 2 KV heads, so
tensor-parallel sizes 1, 2 and 4 divide it; non-trivial norm weights, so a wrong norm
shows in the tokens. And the CPU engine (fp32, no tokenizer) on it, with its greedy tokens."""

from __future__ import annotations

import torch

from llmcore import LLM, SamplingParams

TINY_LLAMA_CONFIG = dict(vocab_size=256, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, rms_norm_eps=1e-6,
                         tie_word_embeddings=False)


def save_tiny_llama(folder: str, **overrides) -> str:
    """Writes the model (TINY_LLAMA_CONFIG with `overrides`, seed 0) to `folder`."""
    import transformers as tf

    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**{**TINY_LLAMA_CONFIG, **overrides}))
    model = model.float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    return folder


PROMPTS = [list(range(3, 8)), list(range(10, 27)), [5] * 9, list(range(40, 73))]


CPU_ENGINE_ARGS = dict(skip_tokenizer_init=True, device="cpu", dtype="float32",
                       max_model_len=128, cpu_kv_cache_space=0.01, max_num_seqs=8, seed=0)


def cpu_llm(folder: str, tp: int = 1, pp: int = 1, **kw) -> LLM:
    """LLM on the CPU with CPU_ENGINE_ARGS (`kw` adds to them or overrides them)."""
    return LLM(model=folder, tensor_parallel_size=tp, pipeline_parallel_size=pp,
               **{**CPU_ENGINE_ARGS, **kw})


def greedy_params(max_tokens: int = 8) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def greedy_tokens(llm: LLM, max_tokens: int = 8) -> list:
    outs = llm.generate(prompt_token_ids=PROMPTS, sampling_params=greedy_params(max_tokens),
                        use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]
