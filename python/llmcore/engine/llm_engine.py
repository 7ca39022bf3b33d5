"""LLMEngine: the synchronous engine of the offline `LLM` API.

A front end (EngineFrontend: validation, tokenization, detokenization, stop strings) over
an engine core reached through a client: in this process by default (`InprocClient`, one
call per step), so one step = core.step() -> front-end processing -> RequestOutputs.
"""

from __future__ import annotations

import logging
from typing import Iterable, Optional, Union

from llmcore.config import EngineArgs
from llmcore.config.engine_config import EngineConfig
from llmcore.engine.core import EngineCore
from llmcore.engine.frontend import EngineFrontend
from llmcore.engine.protocol import EngineStats, ServedModelInfo
from llmcore.engine.request import RequestState
from llmcore.outputs import RequestOutput
from llmcore.sampling_params import SamplingParams
from llmcore.tokenizer.loader import load_tokenizer

logger = logging.getLogger(__name__)


def served_model_info(config: EngineConfig) -> ServedModelInfo:
    mc = config.model_config
    return ServedModelInfo(
        served_model_names=list(mc.served_model_names), model_path=mc.model,
        max_model_len=mc.max_model_len, vocab_size=mc.vocab_size, dtype=str(mc.dtype).split(".")[-1],
        block_size=config.cache_config.block_size, max_logprobs=config.max_logprobs,
        eos_token_ids=list(mc.eos_token_ids), sampling_defaults=dict(mc.sampling_defaults),
        task=config.task, hidden_size=mc.hidden_size)


def load_frontend_tokenizer(config: EngineConfig, args: EngineArgs):
    """(tokenizer or None, EOS id) — the front end's; the core gets only the id."""
    mc = config.model_config
    tokenizer = None if args.skip_tokenizer_init else load_tokenizer(mc, args.tokenizer_mode)
    eos = getattr(tokenizer, "eos_token_id", None) if tokenizer else mc.eos_token_id
    return tokenizer, eos


class LLMEngine:
    def __init__(self, engine_args: EngineArgs):
        self.args = engine_args
        self.config = config = engine_args.create_engine_config()
        self.model_config = mc = config.model_config
        self.device = config.device
        self.tokenizer, eos = load_frontend_tokenizer(config, engine_args)
        self.eos_token_id = eos
        self.core = EngineCore(config, eos_token_id=eos)
        self.model_info = served_model_info(config)
        self.frontend = EngineFrontend(self.tokenizer, self.model_info, eos,
                                       max_num_seqs=config.scheduler_config.max_num_seqs)
        self.metrics = self.frontend.metrics
        self.input_processor = self.frontend.input_processor
        self.output_processor = self.frontend.output_processor
        bs = config.cache_config.block_size
        logger.info("llmcore engine: model=%s dtype=%s device=%s max_model_len=%d KV blocks=%d "
                    "(block_size=%d, %d tokens; max concurrency at max_model_len: %.1fx) swap blocks=%d",
                    mc.model, self.model_info.dtype, self.device, mc.max_model_len,
                    self.num_device_blocks, bs, self.num_device_blocks * bs, self.max_concurrency(),
                    self.core.num_cpu_blocks)

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs) -> "LLMEngine":
        return cls(engine_args)

    # in-process views of the core (tests and benchmarks look at them)
    @property
    def scheduler(self):
        return self.core.scheduler

    @property
    def runner(self):
        return self.core.executor.worker.runner

    @property
    def num_device_blocks(self) -> int:
        return self.core.num_device_blocks

    @property
    def num_cpu_blocks(self) -> int:
        return self.core.num_cpu_blocks

    @property
    def async_scheduling(self) -> bool:
        return self.core.async_scheduling

    @property
    def _inflight(self):
        return self.core._inflight

    @property
    def _num_unpipelinable(self) -> int:
        return self.core._num_unpipelinable

    @property
    def requests(self) -> dict:
        return self.frontend.requests

    def max_concurrency(self) -> float:
        return self.num_device_blocks * self.config.cache_config.block_size / self.model_config.max_model_len

    # ---------------------------------------------------------------- requests
    def add_request(self, request_id: str, prompt, params: SamplingParams,
                    arrival_time: Optional[float] = None, priority: int = 0) -> None:
        """Validate (ValueError on bad input) and queue a request."""
        req = self.make_request(request_id, prompt, params, arrival_time)
        self.add_processed_request(req, priority)

    def make_request(self, request_id: str, prompt, params: SamplingParams,
                     arrival_time: Optional[float] = None) -> RequestState:
        """Thread-safe validation + tokenization."""
        return self.frontend.make_request(request_id, prompt, params, arrival_time)

    def add_processed_request(self, req: RequestState, priority: int = 0) -> None:
        msg = self.frontend.register(req, priority)
        try:
            self.core.add_request(msg)
        except BaseException:
            self.frontend.fail(req.request_id)
            raise

    def abort_request(self, request_id: Union[str, Iterable[str]]) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        self.core.abort_requests(self.frontend.abort(ids))

    def has_unfinished_requests(self) -> bool:
        return bool(self.frontend.requests)

    def get_num_unfinished_requests(self) -> int:
        return len(self.frontend.requests)

    # ---------------------------------------------------------------- step
    def step(self) -> list[RequestOutput]:
        """One engine step; returns the outputs of the requests it advanced. With async
        scheduling the step returns the outputs of the step before it (its own tokens are
        still on the device)."""
        outs, to_abort = self.frontend.process(self.core.step())
        if to_abort:
            self.core.abort_requests(to_abort)
        return outs

    def get_stats(self) -> EngineStats:
        return self.frontend.get_stats(self.core.get_stats())

    @property
    def _stats(self) -> EngineStats:
        return self.frontend.get_stats()
