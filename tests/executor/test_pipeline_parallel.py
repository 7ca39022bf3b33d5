"""Pipeline (and tensor x pipeline) parallelism with the mp executor on the CPU (gloo,
fp32): a tiny random Llama of 3 layers (stages of 2 + 1 layers, 4 heads, 2 KV heads)
gives the single-process greedy tokens with PP=2 and TP=2 x PP=2, sync and async
scheduling; --max-parallel-loading-workers sequences the ranks' weight loading; no
worker outlives deletion or a killed peer."""

from __future__ import annotations

import gc
import os
import signal

import pytest
import torch

from llmcore import LLM, SamplingParams
from llmcore.executor import MultiprocExecutor, WorkerFailure
from llmcore.executor.base import loading_waves

_CFG = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rms_norm_eps=1e-6, tie_word_embeddings=False)
_PROMPTS = [list(range(3, 8)), list(range(10, 27)), [5] * 9, list(range(40, 73))]
_GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny_llama3(tmp_path_factory) -> str:
    import transformers as tf

    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**_CFG)).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    out = str(tmp_path_factory.mktemp("tiny_llama_pp"))
    model.save_pretrained(out)
    return out


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")   # inherited by the spawned workers


def _llm(folder: str, tp: int, pp: int, **kw) -> LLM:
    return LLM(model=folder, tensor_parallel_size=tp, pipeline_parallel_size=pp,
               skip_tokenizer_init=True, device="cpu", dtype="float32", max_model_len=128,
               cpu_kv_cache_space=0.01, max_num_seqs=8, seed=0, **kw)


def _greedy(llm: LLM) -> list:
    outs = llm.generate(prompt_token_ids=_PROMPTS, sampling_params=_GREEDY, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.fixture(scope="module")
def reference_tokens(tiny_llama3) -> list:
    return _greedy(_llm(tiny_llama3, 1, 1))


@pytest.mark.parametrize("tp,pp,async_sched", [(1, 2, False), (1, 2, True), (2, 2, False),
                                               (2, 2, True)])
def test_pipeline_greedy_tokens_equal_one_process(tiny_llama3, reference_tokens, tp, pp,
                                                  async_sched):
    # the last case also loads one rank at a time
    one_at_a_time = (tp, pp, async_sched) == (2, 2, True)
    llm = _llm(tiny_llama3, tp, pp, async_scheduling=async_sched,
               max_parallel_loading_workers=1 if one_at_a_time else None)
    ex = llm.llm_engine.core.executor
    assert isinstance(ex, MultiprocExecutor) and llm.llm_engine.async_scheduling == async_sched
    pids = ex.worker_pids
    assert len(pids) == tp * pp and all(_alive(p) for p in pids)
    # each stage's KV cache holds only its layers (stage 0 two, stage 1 one): in the same
    # memory, stage 1 fits twice the blocks; the engine takes the minimum
    blocks = [b for b, _ in ex.collective_rpc("determine_num_blocks")]
    assert len(set(blocks[:tp])) == len(set(blocks[tp:])) == 1
    assert blocks[tp] in (2 * blocks[0], 2 * blocks[0] + 1), blocks
    assert _greedy(llm) == reference_tokens
    if one_at_a_time:
        spans = sorted(ex.load_intervals)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans   # no overlap
    if (tp, pp, async_sched) == (1, 2, False):
        # a killed stage-0 worker (not the rank that answers) fails the next step, and
        # stage 1, blocked in a recv from it, is stopped too
        os.kill(pids[0], signal.SIGKILL)
        with pytest.raises(WorkerFailure, match=rf"rank 0 died \(pid {pids[0]}, exit code -9\)"):
            _greedy(llm)
        assert not any(_alive(p) for p in pids)
    del llm, ex
    gc.collect()
    assert not any(_alive(p) for p in pids)


def test_loading_waves():
    assert loading_waves(4, None) == [[0, 1, 2, 3]]
    assert loading_waves(4, 1) == [[0], [1], [2], [3]]
    assert loading_waves(5, 2) == [[0, 1], [2, 3], [4]]
    assert loading_waves(2, 8) == [[0, 1]]


def test_bad_pipeline_settings_fail_before_any_worker_starts(tiny_llama3):
    with pytest.raises(ValueError, match="pipeline-parallel-size 4 exceeds the model's 3 layers"):
        _llm(tiny_llama3, 1, 4)
    with pytest.raises(ValueError, match="max-parallel-loading-workers must be >= 1, got 0"):
        _llm(tiny_llama3, 1, 2, max_parallel_loading_workers=0)
    from llmcore.config import EngineArgs
    cfg = EngineArgs(model=tiny_llama3, device="cpu", tensor_parallel_size=2,
                     skip_tokenizer_init=True).create_engine_config()
    cfg.model_config.hf_config.intermediate_size = 130 + 1
    with pytest.raises(ValueError, match="intermediate size 131 is not divisible by "
                                         "--tensor-parallel-size 2"):
        cfg.validate()
