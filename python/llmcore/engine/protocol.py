"""The interface the front ends (HTTP, gRPC) use to talk to the engine.

Front ends know nothing of blocks, kernels or the scheduler: they submit prompts with
sampling parameters, iterate over RequestOutput snapshots, and abort. `AsyncLLMEngine`
(engine/async_engine.py) implements this protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional, Protocol, Union

# A prompt: text, token ids, or a dict {"prompt": str} / {"prompt_token_ids": [int]}.
PromptType = Union[str, list, dict]


@dataclass
class EngineStats:
    """A snapshot of engine state, cheap to take (no locking beyond a copy)."""

    num_running: int = 0          # requests
    num_waiting: int = 0
    num_swapped: int = 0
    kv_cache_usage: float = 0.0   # fraction of device KV blocks in use, 0..1
    num_total_blocks: int = 0
    num_free_blocks: int = 0
    prefix_cache_hit_rate: float = 0.0
    num_preemptions_total: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    request_success_total: dict = field(default_factory=dict)  # finish_reason -> count


@dataclass
class ServedModelInfo:
    """What front ends need to describe the model."""

    served_model_names: list            # first name is used in responses
    model_path: str
    max_model_len: int
    vocab_size: int
    dtype: str
    block_size: int
    max_logprobs: int
    # From the model's generation_config.json (model_loader/generation_config.py): every
    # EOS id, and SamplingParams defaults front ends apply to fields a request leaves unset.
    eos_token_ids: list = field(default_factory=list)
    sampling_defaults: dict = field(default_factory=dict)
    # "generate" or "embed" (--task): which requests the model takes; embeddings have
    # hidden_size values
    task: str = "generate"
    hidden_size: int = 0


class EngineClient(Protocol):
    """Implemented by AsyncLLMEngine.

    - `generate` validates synchronously: bad prompts or sampling params raise
      ValueError (message names the field) before anything is queued. It yields
      cumulative RequestOutput snapshots (text/token_ids so far for each of the n
      outputs, like vLLM); the last one has `finished=True`. If the consumer stops
      iterating (closes the generator, or its task is cancelled) the request is
      aborted and its KV blocks are freed before the next engine step.
    - `encode` (embedding models, model_info.task == "embed") validates likewise and
      yields one finished PoolingRequestOutput; `generate` on such a model, or `encode`
      on a generating one, raises ValueError.
    - `abort` is idempotent.
    - `tokenizer` is a transformers tokenizer (encode / decode / apply_chat_template);
      `chat_template` the model's template string or None. Optional `tokenizer_pool`
      (tokenizer/pool.py): where front ends run tokenization and chat rendering
      (--tokenizer-pool-size); without one they run it in the event loop.
    - `errored` is True once the background loop died; `check_health` raises then.
    - `wait_for_death` returns the error that killed the engine, once it is dead; it
      never returns while the engine is healthy (nor after a clean `shutdown`). Every
      open `generate` iterator raises once the engine is dead.
    """

    model_info: ServedModelInfo
    tokenizer: Any
    chat_template: Optional[str]
    metrics: Any  # llmcore.metrics.EngineMetrics: owns a prometheus CollectorRegistry

    def generate(self, prompt: PromptType, sampling_params: Any, request_id: str
                 ) -> AsyncIterator[Any]: ...

    def encode(self, prompt: PromptType, pooling_params: Any, request_id: str
               ) -> AsyncIterator[Any]: ...

    async def abort(self, request_id: str) -> None: ...

    def get_stats(self) -> EngineStats: ...

    @property
    def errored(self) -> bool: ...

    async def check_health(self) -> None: ...

    async def wait_for_death(self) -> BaseException: ...

    def shutdown(self) -> None: ...
