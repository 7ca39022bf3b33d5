"""GPU engine vs CPU engine: greedy agreement on the SmolLM2-135M shape, fp32.

Both engines get the same weights (dummy weights generated on the CPU, copied into the
GPU model in place, so captured CUDA graphs see them). Skips without CUDA kernels.
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


def agreement(enforce_eager: bool, async_scheduling: bool) -> float:
    from llmcore import LLM
    load_format = "dummy" if os.path.isdir(MODEL) and not any(
        f.endswith((".safetensors", ".bin")) for f in os.listdir(MODEL)) else "auto"
    kw = dict(model=MODEL, load_format=load_format, dtype="float32", max_model_len=512,
              max_num_seqs=8, skip_tokenizer_init=True, seed=0)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 4000, (int(n),), generator=g).tolist()
               for n in torch.randint(8, 40, (NUM_PROMPTS,), generator=g)]
    cpu = LLM(device="cpu", **kw)
    ref = _greedy(cpu, prompts)
    gpu = LLM(device="cuda", enforce_eager=enforce_eager, async_scheduling=async_scheduling,
              gpu_memory_utilization=0.3, **kw)
    src = dict(cpu.llm_engine.runner.model.named_parameters())
    with torch.no_grad():
        for name, p in gpu.llm_engine.runner.model.named_parameters():
            p.copy_(src[name])
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
def test_greedy_agreement_gpu_vs_cpu(enforce_eager, async_scheduling):
    assert agreement(enforce_eager, async_scheduling) >= 0.9
