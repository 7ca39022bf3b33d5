"""--scheduler-delay-factor reaches the C++ scheduler, whose schedule(now) takes the
caller's clock (the batching behaviour itself: tests/cpp/test_scheduler_delay.cpp)."""

from __future__ import annotations

import numpy as np
import pytest

from llmcore import _core


def _scheduler(delay_factor: float):
    cfg = _core.SchedulerConfig()
    cfg.block_size = 16
    cfg.num_device_blocks = 64
    cfg.max_model_len = 128
    cfg.max_num_batched_tokens = 128
    cfg.watermark = 0.0
    cfg.delay_factor = delay_factor
    return _core.Scheduler(cfg)


def _prefill_steps(delay_factor: float, arrivals: int = 10) -> int:
    """A request decodes throughout; one prompt arrives per (fake) time unit."""
    s = _scheduler(delay_factor)
    prompt = np.arange(1, 9, dtype=np.int32)
    s.add_request(0, 0, prompt, arrival_time=0.0)
    steps = 0
    for t in range(100):
        if 1 <= t <= arrivals:
            s.add_request(t, t, prompt, arrival_time=float(t))
        out = s.schedule(now=float(t))
        steps += int(np.asarray(out.is_new)[:out.num_prefill_seqs].any()) if t else 0
        sampled = np.asarray(out.seq_ids)[np.asarray(out.do_sample).astype(bool)]
        s.update(sampled.astype(np.int64), np.full(len(sampled), 7, dtype=np.int32))
        if t > arrivals and s.num_waiting() == 0:
            break
    assert s.num_waiting() == 0
    return steps


def test_delay_factor_batches_prompts_through_the_binding():
    assert _prefill_steps(0.0) == 10
    assert _prefill_steps(2.0) < 10


def test_negative_delay_factor_is_refused():
    with pytest.raises(ValueError, match="delay_factor"):
        _scheduler(-1.0)


def test_engine_passes_the_flag_to_the_scheduler(tmp_path):
    import torch
    import transformers as tf

    from llmcore.config import EngineArgs
    from llmcore.engine.llm_engine import LLMEngine

    cfg = tf.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, eos_token_id=None, bos_token_id=None)
    torch.manual_seed(0)
    tf.LlamaForCausalLM(cfg).save_pretrained(str(tmp_path))
    engine = LLMEngine(EngineArgs(model=str(tmp_path), skip_tokenizer_init=True, device="cpu",
                                  num_gpu_blocks_override=16, disable_log_stats=True,
                                  scheduler_delay_factor=0.5))
    assert engine.scheduler.config.delay_factor == 0.5
