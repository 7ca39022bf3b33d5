"""AsyncLLMEngine.generate(..., priority=) reaches the C++ scheduler: with one sequence
slot, of two requests queued together the lower priority value runs first."""

from __future__ import annotations

import asyncio

import pytest
import torch

from llmcore.config import EngineArgs


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    import transformers as tf

    cfg = tf.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, tie_word_embeddings=False,
                         eos_token_id=None, bos_token_id=None)
    torch.manual_seed(0)
    out = str(tmp_path_factory.mktemp("tiny"))
    tf.LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def _run(folder, priorities: dict) -> list:
    from llmcore.engine.async_engine import AsyncLLMEngine
    from llmcore.engine.llm_engine import LLMEngine
    from llmcore.sampling_params import SamplingParams

    args = EngineArgs(model=folder, skip_tokenizer_init=True, device="cpu", max_num_seqs=1,
                      max_model_len=64, num_gpu_blocks_override=32, cpu_kv_cache_space=0.01,
                      disable_log_stats=True)
    engine = AsyncLLMEngine(LLMEngine(args), start=False)
    seen = []
    add = engine.engine.add_processed_request

    def spy(req, priority=0):
        seen.append((req.request_id, priority))
        return add(req, priority)

    engine.engine.add_processed_request = spy
    finished: list = []

    async def main():
        sp = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True, detokenize=False)
        gens = {rid: engine.generate([1, 2, 3], sp, rid, priority=p) if p is not None
                else engine.generate([1, 2, 3], sp, rid) for rid, p in priorities.items()}
        engine._thread.start()  # both adds are drained before the first step

        async def drain(rid, gen):
            async for out in gen:
                if out.finished:
                    finished.append(rid)
        await asyncio.gather(*(drain(r, g) for r, g in gens.items()))

    try:
        asyncio.run(main())
    finally:
        engine.shutdown()
    return seen, finished


def test_priority_orders_scheduling(tiny_folder):
    seen, finished = _run(tiny_folder, {"late": 5, "urgent": -1})
    assert sorted(seen) == [("late", 5), ("urgent", -1)]
    assert finished == ["urgent", "late"]
    seen, finished = _run(tiny_folder, {"a": None, "b": None})  # default 0: arrival order
    assert seen == [("a", 0), ("b", 0)] and finished == ["a", "b"]
