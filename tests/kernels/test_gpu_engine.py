"""GPU engine vs CPU engine: greedy agreement on the SmolLM2-135M shape, fp32.

Both engines load the same checkpoint through the real loader: random HF-initialised
weights written once as safetensors (the CPU engine packs its linear weights for oneDNN at
load, so parameters cannot be copied between the two models). Skips without CUDA kernels.
Set LLMCORE_GPU_TEST_MODEL to a real checkpoint (HF folder / .gguf) to use real weights.
"""

import os

import pytest
import torch

from llmcore import ops

pytestmark = pytest.mark.skipif(not ops.cuda_available(), reason="needs CUDA and llmcore._cuda")

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.environ.get("LLMCORE_GPU_TEST_MODEL",
                       os.path.join(_REPO, "benchmarks", "configs", "smollm2-135m"))
NUM_PROMPTS, NUM_TOKENS = 8, 32


def _greedy(llm, prompts):
    from llmcore import SamplingParams
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True),
                        use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def _has_weights(path: str) -> bool:
    return not os.path.isdir(path) or any(f.endswith((".safetensors", ".bin"))
                                          for f in os.listdir(path))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """MODEL if it holds weights, else MODEL's config with random weights in a HF folder."""
    if _has_weights(MODEL):
        return MODEL
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM
    out = str(tmp_path_factory.mktemp("gpu_engine_ckpt"))
    config = AutoConfig.from_pretrained(MODEL)
    # HF's default init (std 0.02) makes this model repeat one token; 0.06 gives varied
    # greedy continuations, so a broken attention or cache path shows as a mismatch.
    config.initializer_range = 0.06
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    config.save_pretrained(out)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    return out


def agreement(checkpoint: str, enforce_eager: bool, async_scheduling: bool) -> float:
    import gc

    from llmcore import LLM
    gc.collect()   # engines of earlier cases hold their KV pools until collected
    torch.cuda.empty_cache()
    kw = dict(model=checkpoint, dtype="float32", max_model_len=512,
              max_num_seqs=8, skip_tokenizer_init=True, seed=0)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 4000, (int(n),), generator=g).tolist()
               for n in torch.randint(8, 40, (NUM_PROMPTS,), generator=g)]
    cpu = LLM(device="cpu", **kw)
    ref = _greedy(cpu, prompts)
    gpu = LLM(device="cuda", enforce_eager=enforce_eager, async_scheduling=async_scheduling,
              gpu_memory_utilization=0.3, **kw)
    got = _greedy(gpu, prompts)
    same = sum(a == b for r, o in zip(ref, got) for a, b in zip(r, o))
    # count up to the first divergence per prompt (later tokens follow different contexts)
    prefix = 0
    for r, o in zip(ref, got):
        for a, b in zip(r, o):
            if a != b:
                break
            prefix += 1
    total = NUM_PROMPTS * NUM_TOKENS
    print(f"greedy agreement GPU vs CPU (enforce_eager={enforce_eager}, "
          f"async_scheduling={async_scheduling}): "
          f"{same}/{total} = {same / total:.3f} positionwise, {prefix / total:.3f} up to first divergence")
    return same / total


@pytest.mark.parametrize("enforce_eager", [True, False])
@pytest.mark.parametrize("async_scheduling", [False, True])
def test_greedy_agreement_gpu_vs_cpu(checkpoint, enforce_eager, async_scheduling):
    assert agreement(checkpoint, enforce_eager, async_scheduling) >= 0.9


@pytest.mark.parametrize("kv_cache_dtype", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_kv_cache_agrees_with_bf16_cache(kv_cache_dtype):
    """--kv-cache-dtype fp8: the same bf16 model with an fp8 cache (scale 1.0) vs a bf16
    cache, greedy. Dummy weights give near-flat logits, where fp8 rounding flips near-ties,
    so the bar is a majority of matching tokens, and the step must be fully functional
    (prefill, decode graphs, n>1 copy-on-write)."""
    import gc

    from llmcore import LLM, SamplingParams
    gc.collect()   # engines of earlier tests hold their KV pools until collected
    torch.cuda.empty_cache()
    kw = dict(model=MODEL, load_format="dummy", dtype="bfloat16", max_model_len=512,
              max_num_seqs=8, skip_tokenizer_init=True, seed=0, gpu_memory_utilization=0.3)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(100, 4000, (int(n),), generator=g).tolist()
               for n in torch.randint(8, 40, (NUM_PROMPTS,), generator=g)]
    ref_llm = LLM(**kw)
    ref = _greedy(ref_llm, prompts)
    src = {k: v.detach().clone() for k, v in ref_llm.llm_engine.runner.model.named_parameters()}
    del ref_llm
    import gc
    gc.collect()   # its KV pool goes back before the next engine sizes its own
    torch.cuda.empty_cache()
    import gc
    gc.collect()
    torch.cuda.empty_cache()
    llm = LLM(kv_cache_dtype=kv_cache_dtype, **kw)
    assert llm.llm_engine.runner.kv_cache.device_caches[0][0].element_size() == 1
    with torch.no_grad():
        for name, p in llm.llm_engine.runner.model.named_parameters():
            p.copy_(src[name])
    got = _greedy(llm, prompts)
    same = sum(a == b for r, o in zip(ref, got) for a, b in zip(r, o))
    print(f"greedy agreement fp8 ({kv_cache_dtype}) vs bf16 KV cache: {same}/{NUM_PROMPTS * NUM_TOKENS}")
    assert same >= NUM_PROMPTS * NUM_TOKENS // 2
    outs = llm.generate([{"prompt_token_ids": prompts[0]}],
                        SamplingParams(n=3, temperature=0.8, seed=0, max_tokens=8), use_tqdm=False)
    assert [len(c.token_ids) for c in outs[0].outputs] == [8, 8, 8]
    assert llm.llm_engine.scheduler.device_usage() == 0.0
