"""Tokenizer pools (--tokenizer-pool-size/-type/-extra-config): where the work runs, what
the flags resolve into, and that every kind returns what the tokenizer itself returns."""

from __future__ import annotations

import asyncio
import threading

import pytest

from llmcore.config import EngineArgs
from llmcore.config.engine_config import TokenizerPoolConfig
from llmcore.entrypoints.chat_template import ChatTemplateError, render_chat_and_encode
from llmcore.tokenizer import pool as pool_mod
from llmcore.tokenizer.pool import (RayTokenizerPool, ThreadTokenizerPool, TokenizerPool,
                                    create_tokenizer_pool, encode_text)

TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MESSAGES = [{"role": "user", "content": "What is 2+2? " * 50}]


def _thread_of(tokenizer) -> int:
    return threading.get_ident()


def test_inline_runs_in_the_loop_thread_and_threads_off_it():
    async def main(pool):
        return await pool.run(_thread_of), threading.get_ident()

    inner, loop_thread = asyncio.run(main(TokenizerPool(object())))
    assert inner == loop_thread
    thread_pool = ThreadTokenizerPool(object(), 2)
    try:
        inner, loop_thread = asyncio.run(main(thread_pool))
        assert inner != loop_thread
    finally:
        thread_pool.shutdown()


def test_thread_pool_matches_the_tokenizer(smollm2_tokenizer):
    tok = smollm2_tokenizer
    pool = ThreadTokenizerPool(tok, 2)

    async def main():
        texts = [f"prompt {i}: " + "word " * (i * 50) for i in range(8)]
        got = await asyncio.gather(*(pool.encode(t) for t in texts))
        assert got == [tok.encode(t) for t in texts]
        text, ids = await pool.run(render_chat_and_encode, TEMPLATE, MESSAGES, False, True,
                                   False, {})
        assert ids == tok.encode(text, add_special_tokens=False)
        assert text.endswith("<|im_start|>assistant\n")
        with pytest.raises(ChatTemplateError):
            await pool.run(render_chat_and_encode, "{{ raise_exception('no') }}", MESSAGES,
                           False, True, False, {})

    try:
        asyncio.run(main())
    finally:
        pool.shutdown()


def test_flags_resolve_and_bad_values_are_refused():
    assert EngineArgs().tokenizer_pool_config() == TokenizerPoolConfig(0, "ray", {})
    cfg = EngineArgs(tokenizer_pool_size=3, tokenizer_pool_type="ray",
                     tokenizer_pool_extra_config='{"num_cpus": 0.5}').tokenizer_pool_config()
    assert cfg == TokenizerPoolConfig(3, "ray", {"num_cpus": 0.5})
    for kw, match in [({"tokenizer_pool_size": -1}, "tokenizer-pool-size"),
                      ({"tokenizer_pool_type": "process"}, "tokenizer-pool-type"),
                      ({"tokenizer_pool_extra_config": "{nope"}, "not valid JSON"),
                      ({"tokenizer_pool_extra_config": "[1]"}, "JSON object"),
                      ({"tokenizer_pool_type": "thread",
                        "tokenizer_pool_extra_config": '{"num_cpus": 1}'}, "needs")]:
        with pytest.raises(ValueError, match=match):
            EngineArgs(**kw).validate()


def test_pool_kinds_and_ray_fallback(monkeypatch):
    tok = object()
    assert create_tokenizer_pool(TokenizerPoolConfig(0, "ray"), tok).kind == "inline"
    assert create_tokenizer_pool(TokenizerPoolConfig(2, "ray"), None).kind == "inline"
    p = create_tokenizer_pool(TokenizerPoolConfig(2, "thread"), tok)
    assert p.kind == "thread"
    p.shutdown()
    monkeypatch.setattr(pool_mod, "ray_available", lambda: False)
    p = create_tokenizer_pool(TokenizerPoolConfig(1, "ray"), tok)
    assert isinstance(p, ThreadTokenizerPool)
    p.shutdown()


@pytest.mark.slow
@pytest.mark.skipif(not pool_mod.ray_available(), reason="Ray is not installed")
def test_ray_pool_matches_the_tokenizer(smollm2_tokenizer):
    """Two actors on a local Ray (num_cpus=1 keeps it small), each with its own copy."""
    import ray

    tok = smollm2_tokenizer
    import sys

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    # _pid lives in this test module, which the actors cannot import: send it by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        pool = create_tokenizer_pool(TokenizerPoolConfig(2, "ray", {"num_cpus": 0}), tok)
        assert isinstance(pool, RayTokenizerPool)

        async def main():
            texts = [f"prompt {i}: " + "word " * (i * 50) for i in range(6)]
            got = await asyncio.gather(*(pool.encode(t) for t in texts))
            assert got == [tok.encode(t) for t in texts]
            text, ids = await pool.run(render_chat_and_encode, TEMPLATE, MESSAGES, False, True,
                                       False, {})
            assert ids == tok.encode(text, add_special_tokens=False)
            with pytest.raises(ChatTemplateError, match="no"):
                await pool.run(render_chat_and_encode, "{{ raise_exception('no') }}", MESSAGES,
                               False, True, False, {})
            pid = await pool.run(_pid)
            return pid

        import os
        assert asyncio.run(main()) != os.getpid()   # the work ran in an actor process
        pool.shutdown()
        assert ray.is_initialized()  # a Ray this pool did not start is left running
    finally:
        ray.shutdown()


def _pid(tokenizer) -> int:
    import os
    return os.getpid()


def test_encode_text_returns_plain_ints(smollm2_tokenizer):
    ids = encode_text(smollm2_tokenizer, "hello world", True)
    assert ids == smollm2_tokenizer.encode("hello world") and all(type(i) is int for i in ids)
