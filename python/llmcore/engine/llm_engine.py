"""LLMEngine: the synchronous engine of the offline `LLM` API.

A front end (EngineFrontend: validation, tokenization, detokenization, stop strings) over
an engine core: in this process by default (called directly, one call per step), so one
step = core.step() -> front-end processing -> RequestOutputs; or, with
`engine_core_process=True`, in its own process through `SyncMPClient` (the servers' IPC
contract), where a step is the next batch of outputs the core sent; with
`engine_use_ray=True`, the same through a Ray actor.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Iterable, Optional, Union

from llmcore.config import EngineArgs
from llmcore.config.engine_config import EngineConfig
from llmcore.engine.beam_driver import BeamSearchRun, SyncBeamSearch
from llmcore.engine.core import EngineCore
from llmcore.engine.core_client import CoreProcessConfig, SyncMPClient
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


def core_process_config(args: EngineArgs, config: EngineConfig,
                        eos_token_id: Optional[int]) -> CoreProcessConfig:
    """How a front end starts its engine core out of its process: a process of this host,
    or a Ray actor (--engine-use-ray), which builds the core from the same flags."""
    ray = None
    if config.parallel_config.engine_use_ray:
        from llmcore.engine.core_ray import ray_core_actor_config
        ray = ray_core_actor_config(config)
        # the actor may run on another node: the device resolved here, not "auto" there
        args = dataclasses.replace(args, device=config.device.type)
    return CoreProcessConfig(core_factory="llmcore.engine.async_llm:engine_core_from_args",
                             factory_args=(args, eos_token_id), ray=ray)


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
        self.client: Optional[SyncMPClient] = None
        self.core: Optional[EngineCore] = None
        if engine_args.engine_core_process or config.parallel_config.engine_use_ray:
            self.client = SyncMPClient(core_process_config(engine_args, config, eos))
            info = self.client.ready_info
            self._num_blocks = (int(info.get("num_device_blocks", 0)),
                                int(info.get("num_cpu_blocks", 0)))
        else:
            self.core = EngineCore(config, eos_token_id=eos)
        self.model_info = served_model_info(config)
        self.frontend = EngineFrontend(self.tokenizer, self.model_info, eos,
                                       max_num_seqs=config.scheduler_config.max_num_seqs)
        self.metrics = self.frontend.metrics
        self.input_processor = self.frontend.input_processor
        self.output_processor = self.frontend.output_processor
        self.beam_search = SyncBeamSearch(self._add_beam_step)
        bs = config.cache_config.block_size
        logger.info("llmcore engine: model=%s dtype=%s device=%s max_model_len=%d KV blocks=%d "
                    "(block_size=%d, %d tokens; max concurrency at max_model_len: %.1fx) swap blocks=%d",
                    mc.model, self.model_info.dtype, self.device, mc.max_model_len,
                    self.num_device_blocks, bs, self.num_device_blocks * bs, self.max_concurrency(),
                    self.num_cpu_blocks)
        if self.client is not None:
            self.frontend.core_stats.num_total_blocks = self.num_device_blocks
            self.frontend.core_stats.num_free_blocks = self.num_device_blocks

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs) -> "LLMEngine":
        return cls(engine_args)

    # in-process views of the core (tests and benchmarks look at them)
    def _local_core(self) -> EngineCore:
        if self.core is None:
            raise RuntimeError("the engine core runs in its own process (engine_core_process="
                               "True or engine_use_ray=True): its scheduler and runner are not "
                               "reachable from here")
        return self.core

    @property
    def scheduler(self):
        return self._local_core().scheduler

    @property
    def runner(self):
        return self._local_core().executor.worker.runner

    @property
    def num_device_blocks(self) -> int:
        return self.core.num_device_blocks if self.core is not None else self._num_blocks[0]

    @property
    def num_cpu_blocks(self) -> int:
        return self.core.num_cpu_blocks if self.core is not None else self._num_blocks[1]

    @property
    def async_scheduling(self) -> bool:
        return self.config.scheduler_config.async_scheduling

    @property
    def _inflight(self):
        return self._local_core()._inflight

    @property
    def _num_unpipelinable(self) -> int:
        return self._local_core()._num_unpipelinable

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
        if req.is_beam:   # runs above the core: its steps are ordinary requests
            if req.request_id in self.frontend.requests:
                raise ValueError(f"request_id {req.request_id!r} is already in use")
            self.beam_search.add(self.new_beam_run(req), priority)
            return
        if req.request_id in self.beam_search.runs:
            raise ValueError(f"request_id {req.request_id!r} is already in use")
        msg = self.frontend.register(req, priority)
        try:
            (self.core or self.client).add_request(msg)
        except BaseException:
            self.frontend.fail(req.request_id)
            raise

    def new_beam_run(self, req: RequestState) -> BeamSearchRun:
        return BeamSearchRun(req, self.eos_token_id, self.model_info.max_model_len,
                             self.model_info.max_logprobs, self.tokenizer)

    def _add_beam_step(self, requests: list, priority: int) -> None:
        reqs = [self.make_request(rid, prompt, params) for rid, prompt, params in requests]
        for req in reqs:
            req.stream_outputs = False
            self.add_processed_request(req, priority)

    def abort_request(self, request_id: Union[str, Iterable[str]]) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        ids += self.beam_search.abort(ids)
        to_abort = self.frontend.abort(ids)
        if to_abort:
            (self.core or self.client).abort_requests(to_abort)

    def has_unfinished_requests(self) -> bool:
        return bool(self.frontend.requests) or bool(self.beam_search.runs)

    def get_num_unfinished_requests(self) -> int:
        bs = self.beam_search
        return len(self.frontend.requests) - bs.num_step_requests() + len(bs.runs)

    # ---------------------------------------------------------------- step
    def step(self) -> list[RequestOutput]:
        """One engine step; returns the outputs of the requests it advanced. With async
        scheduling the step returns the outputs of the step before it (its own tokens are
        still on the device)."""
        core_outputs = self.core.step() if self.core is not None else self.client.get_output()
        outs, to_abort = self.frontend.process(core_outputs)
        if to_abort:
            (self.core or self.client).abort_requests(to_abort)
        if self.beam_search.runs:
            outs = self.beam_search.step_outputs(outs)   # may add the next beam steps
        return outs

    def take_refused(self) -> list:
        """(request id, message) of the requests the core failed since the last call (e.g. a
        grammar that did not compile): they are finished; the caller reports them. The step
        loop itself never raises for one request's failure."""
        refused, self.frontend.refused = self.frontend.refused, []
        return refused

    def get_stats(self) -> EngineStats:
        if self.core is None:   # the core process sends its stats with every step
            return self.frontend.get_stats()
        return self.frontend.get_stats(self.core.get_stats())

    def shutdown(self) -> None:
        """Stop the engine core (and its process and workers, if any)."""
        if self.client is not None:
            self.client.shutdown()
        elif self.core is not None:
            self.core.shutdown()

    @property
    def _stats(self) -> EngineStats:
        return self.frontend.get_stats()
