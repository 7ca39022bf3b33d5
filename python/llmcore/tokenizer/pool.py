"""Tokenizer pool (vLLM's --tokenizer-pool-size / -type / -extra-config): tokenization and
chat-template rendering off the servers' event loop, so that a long prompt being
tokenized does not stall the other streams.

Work is a module-level function ``fn(tokenizer, *args, **kwargs)``; a pool runs it
- size 0: inline, in the caller's thread (the event loop), as before (vLLM's default);
- type "thread": in a local pool of `size` threads sharing the front end's tokenizer
  (HF fast tokenizers encode without holding the GIL; their encode only reads);
- type "ray" (vLLM's): in `size` Ray actors, each with its own copy of the tokenizer, in
  processes of their own. `extra_config` is passed to each actor's `.options()` (e.g.
  {"num_cpus": 1, "runtime_env": {...}}), as vLLM does. Ray is started locally
  (`ray.init()`) unless this process is already connected to a cluster. Without Ray
  installed, "ray" falls back to the thread pool, with a warning.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import logging
from typing import Any, Callable

from llmcore.config.engine_config import TokenizerPoolConfig

logger = logging.getLogger(__name__)

def encode_text(tokenizer: Any, text: str, add_special_tokens: bool = True) -> list[int]:
    return [int(t) for t in tokenizer.encode(text, add_special_tokens=add_special_tokens)]


class TokenizerPool:
    """Inline: runs the work in the caller's thread."""

    kind = "inline"

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    async def run(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        return fn(self.tokenizer, *args, **kwargs)

    async def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return await self.run(encode_text, text, add_special_tokens)

    def shutdown(self) -> None:
        pass


class ThreadTokenizerPool(TokenizerPool):
    kind = "thread"

    def __init__(self, tokenizer: Any, size: int):
        super().__init__(tokenizer)
        self._executor = concurrent.futures.ThreadPoolExecutor(size, thread_name_prefix="tokenizer")

    async def run(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(self.tokenizer, *args, **kwargs))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class _TokenizerActor:
    """One Ray actor: a tokenizer copy and the work functions run on it."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def run(self, fn: Callable, args: tuple, kwargs: dict) -> Any:
        return fn(self.tokenizer, *args, **kwargs)


class RayTokenizerPool(TokenizerPool):
    """`size` actors; each call takes an idle one (waiting when all are busy)."""

    kind = "ray"

    def __init__(self, tokenizer: Any, size: int, actor_options: dict):
        import ray

        super().__init__(tokenizer)
        self._ray = ray
        self._started_ray = False
        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
            self._started_ray = True
        options = {"num_cpus": 0, **actor_options}
        actor_cls = ray.remote(_TokenizerActor)
        tok_ref = ray.put(tokenizer)
        self._actors = [actor_cls.options(**options).remote(tok_ref) for _ in range(size)]
        self._idle: asyncio.Queue | None = None

    def _idle_queue(self) -> asyncio.Queue:
        # created on first use, in the loop that uses the pool
        if self._idle is None:
            self._idle = asyncio.Queue()
            for a in self._actors:
                self._idle.put_nowait(a)
        return self._idle

    async def run(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        idle = self._idle_queue()
        actor = await idle.get()
        try:
            return await actor.run.remote(fn, args, kwargs)
        except self._ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise
        finally:
            idle.put_nowait(actor)

    def shutdown(self) -> None:
        for a in self._actors:
            try:
                self._ray.kill(a)
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
        self._actors = []
        if self._started_ray:
            self._ray.shutdown()
            self._started_ray = False


def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def create_tokenizer_pool(config: TokenizerPoolConfig, tokenizer: Any) -> TokenizerPool:
    config.validate()
    if tokenizer is None or config.pool_size == 0:
        return TokenizerPool(tokenizer)
    if config.pool_type == "ray":
        if ray_available():
            return RayTokenizerPool(tokenizer, config.pool_size, config.extra_config)
        logger.warning("--tokenizer-pool-type ray: Ray is not installed; using a local pool of "
                       "%d threads%s", config.pool_size,
                       " (--tokenizer-pool-extra-config, Ray actor options, is not used)"
                       if config.extra_config else "")
    return ThreadTokenizerPool(tokenizer, config.pool_size)
