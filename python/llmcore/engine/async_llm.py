"""AsyncLLM: the servers' engine. The engine core (scheduler, executor, step loop) runs in
its own process (a Ray actor with --engine-use-ray); this front end keeps tokenization,
detokenization, stop strings and the streams, so HTTP/gRPC work (SSE, JSON,
detokenization) never shares a GIL with the steps.

One output task per event loop reads the core's per-step EngineCoreOutputs, turns them
into RequestOutput snapshots (EngineFrontend) and hands each to its stream. If the core
process dies, every stream ends with EngineDeadError and `wait_for_death()` returns.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from typing import AsyncIterator, Optional

from llmcore.config import EngineArgs
from llmcore.engine.beam_driver import BeamSearchRun, run_beam_search_async
from llmcore.engine.core_client import AsyncMPClient, EngineDeadError
from llmcore.engine.core_types import SchedulerStats
from llmcore.engine.frontend import EngineFrontend
from llmcore.engine.llm_engine import (core_process_config, load_frontend_tokenizer,
                                       served_model_info)
from llmcore.engine.snapshot_stream import newest_snapshots
from llmcore.engine.protocol import EngineStats, PromptType
from llmcore.engine.stat_logger import StatLogger
from llmcore.outputs import RequestOutput
from llmcore.pooling_outputs import PoolingRequestOutput
from llmcore.pooling_params import PoolingParams
from llmcore.sampling_params import SamplingParams
from llmcore.tokenizer.pool import create_tokenizer_pool

logger = logging.getLogger(__name__)

__all__ = ["AsyncLLM", "EngineDeadError"]


def engine_core_from_args(engine_args: EngineArgs, eos_token_id: Optional[int]):
    """The core process's factory (runs there): config resolved from the same flags. The
    core is a long-running server process too: after its start-up objects exist, it gets
    the servers' GC settings (each step allocates per-token objects that would otherwise
    trigger collections walking every torch/model object)."""
    from llmcore.engine.core import EngineCore
    from llmcore.entrypoints.gc_tuning import tune_gc_for_serving
    core = EngineCore(engine_args.create_engine_config(), eos_token_id=eos_token_id)
    tune_gc_for_serving()
    return core


class AsyncLLM:
    def __init__(self, engine_args: EngineArgs, stat_logger: Optional[StatLogger] = None):
        self.args = engine_args
        config = engine_args.create_engine_config()   # validated before any process starts
        self.tokenizer, eos = load_frontend_tokenizer(config, engine_args)
        self.model_info = served_model_info(config)
        self.chat_template = getattr(self.tokenizer, "chat_template", None)
        # the servers' tokenization / chat rendering (--tokenizer-pool-size)
        self.tokenizer_pool = create_tokenizer_pool(config.tokenizer_pool_config, self.tokenizer)
        self.frontend = EngineFrontend(self.tokenizer, self.model_info, eos,
                                       max_num_seqs=config.scheduler_config.max_num_seqs)
        self.metrics = self.frontend.metrics
        self._stat_logger = stat_logger
        self.client = AsyncMPClient(core_process_config(engine_args, config, eos))
        info = getattr(self.client, "ready_info", None) or {}
        self.frontend.core_stats = SchedulerStats(num_total_blocks=int(info.get("num_device_blocks", 0)),
                                                  num_free_blocks=int(info.get("num_device_blocks", 0)))
        self._streams: dict[str, asyncio.Queue] = {}
        self._beams: dict[str, BeamSearchRun] = {}   # live beam searches (above the core)
        self._beam_tasks: dict[str, asyncio.Task] = {}
        self._output_task: Optional[asyncio.Task] = None
        self._dead: Optional[BaseException] = None

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs) -> "AsyncLLM":
        return cls(engine_args, stat_logger=None if engine_args.disable_log_stats else StatLogger())

    # ------------------------------------------------------------ requests
    def generate(self, prompt: PromptType, sampling_params: SamplingParams,
                 request_id: Optional[str] = None, priority: int = 0) -> AsyncIterator[RequestOutput]:
        """Validate now (ValueError on bad input), then stream cumulative outputs."""
        if self._dead is not None:
            raise EngineDeadError(None, f"engine core is dead: {self._dead}")
        request_id = request_id if request_id is not None else uuid.uuid4().hex
        req = self.frontend.make_request(request_id, prompt, sampling_params)
        if request_id in self._streams or request_id in self._beams:
            raise ValueError(f"request_id {request_id!r} is already in use")
        if req.is_beam:
            run = BeamSearchRun(req, self.frontend.eos_token_id, self.model_info.max_model_len,
                                self.model_info.max_logprobs, self.tokenizer)
            self._beams[request_id] = run   # reserves the id
            stream = self._iterate_beam(run, priority)
            weakref.finalize(stream, self._release_beam, request_id, run)
            return stream
        queue: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = queue   # reserves the id
        self._ensure_output_task()
        stream = self._iterate(request_id, queue, req, priority)
        # The request reaches the front end's books and the core on the first iteration; a
        # stream that is never iterated only gives its reserved id back when collected.
        weakref.finalize(stream, self._release_stream, request_id, queue)
        return stream

    def encode(self, prompt: PromptType, pooling_params: PoolingParams,
               request_id: Optional[str] = None, priority: int = 0
               ) -> AsyncIterator[PoolingRequestOutput]:
        """An embedding model's pooling request (vLLM's `encode`): validated now
        (ValueError), then one finished PoolingRequestOutput."""
        if not isinstance(pooling_params, PoolingParams):
            raise ValueError(f"pooling_params: expected PoolingParams, got "
                             f"{type(pooling_params).__name__}")
        return self.generate(prompt, pooling_params, request_id, priority)  # type: ignore[arg-type]

    def _release_stream(self, request_id: str, queue: asyncio.Queue) -> None:
        if self._streams.get(request_id) is queue:
            del self._streams[request_id]

    async def _iterate(self, request_id: str, q: asyncio.Queue, req,
                       priority: int) -> AsyncIterator[RequestOutput]:
        try:
            msg = self.frontend.register(req, priority)
        except BaseException:
            self._release_stream(request_id, q)
            raise
        finished = False
        try:
            await self.client.add_request_async(msg)
            snapshots = newest_snapshots(q)
            while not finished:
                try:
                    item = await snapshots.__anext__()
                except Exception:
                    finished = True   # the engine ended it (refused, dead): nothing to abort
                    raise
                finished = item.finished
                # a consumer that goes away gets GeneratorExit here: not finished, aborted below
                yield item
        finally:
            self._release_stream(request_id, q)
            if not finished:
                # consumer went away (disconnect, cancellation): free the KV blocks now
                await self._abort_quietly(request_id)

    def _release_beam(self, request_id: str, run: BeamSearchRun) -> None:
        if self._beams.get(request_id) is run:
            del self._beams[request_id]

    async def _iterate_beam(self, run: BeamSearchRun, priority: int) -> AsyncIterator[RequestOutput]:
        """A beam search: its steps are ordinary requests through `generate`; one output,
        the final hypotheses."""
        rid = run.request_id
        task = asyncio.ensure_future(run_beam_search_async(
            run, lambda sid, prompt, params: self.generate(prompt, params, request_id=sid,
                                                           priority=priority)))
        self._beam_tasks[rid] = task
        try:
            try:
                out = await task
            except asyncio.CancelledError:
                if task.cancelled() and run.req.aborted:
                    return   # abort(): the step streams are closed, their requests aborted
                raise
            yield out
        finally:
            self._release_beam(rid, run)
            if self._beam_tasks.get(rid) is task:
                del self._beam_tasks[rid]
            if not task.done():
                task.cancel()   # consumer went away: closes the step streams (aborts them)

    async def _abort_quietly(self, request_id: str) -> None:
        live = self.frontend.abort([request_id])
        if live and self._dead is None:
            try:
                await self.client.abort_requests_async(live)
            except EngineDeadError:
                pass

    async def abort(self, request_id: str) -> None:
        task = self._beam_tasks.get(request_id)
        if task is not None:
            self._beams[request_id].req.aborted = True
            task.cancel()
            # the step streams abort their requests as they close
            await asyncio.wait([task])
            return
        await self._abort_quietly(request_id)

    # ------------------------------------------------------------ outputs
    def _ensure_output_task(self) -> None:
        if self._output_task is None or self._output_task.done() and self._dead is None:
            self._output_task = asyncio.get_running_loop().create_task(self._output_loop())

    async def _output_loop(self) -> None:
        frontend, streams = self.frontend, self._streams
        try:
            while True:
                core_out = await self.client.get_output_async()
                outs, to_abort = frontend.process(core_out)
                for out in outs:
                    q = streams.get(out.request_id)
                    if q is not None:
                        q.put_nowait(out)
                if frontend.refused:
                    for rid, msg in frontend.refused:
                        q = streams.get(rid)
                        if q is not None:
                            q.put_nowait(ValueError(msg))
                    frontend.refused.clear()
                if to_abort:
                    await self.client.abort_requests_async(to_abort)
                if self._stat_logger is not None:
                    self._stat_logger.maybe_log(frontend.get_stats())
        except EngineDeadError as e:
            self._die(e)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - the front end must report any death
            logger.exception("engine output loop died")
            self._die(e)

    def _die(self, e: BaseException) -> None:
        self._dead = e
        err = e if isinstance(e, EngineDeadError) else EngineDeadError(None, f"engine loop died: {e!r}")
        for q in list(self._streams.values()):
            q.put_nowait(err)

    # ------------------------------------------------------------ health
    def get_stats(self) -> EngineStats:
        return self.frontend.get_stats()

    @property
    def errored(self) -> bool:
        return self._dead is not None or bool(getattr(self.client, "errored", False))

    async def check_health(self) -> None:
        if self.errored:
            raise EngineDeadError(None, f"engine core is dead: {self._dead}")

    async def wait_for_death(self) -> BaseException:
        err = await self.client.wait_for_death()
        if self._dead is None:
            self._die(err)
        return err

    def shutdown(self) -> None:
        self.tokenizer_pool.shutdown()
        if self._output_task is not None and not self._output_task.done():
            self._output_task.cancel()
        self.client.shutdown()

