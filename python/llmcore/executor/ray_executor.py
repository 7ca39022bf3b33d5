"""One Ray actor per rank (the "ray" backend): tensor parallelism on one host or several.

The ranks are placed by a placement group, one bundle per rank ({"GPU": 1} on CUDA,
{"CPU": 1} on the CPU), packed onto one host when one host has room (STRICT_PACK), else
spread as little as possible (PACK). The executor joins the Ray cluster this process or
`ray start` / RAY_ADDRESS already runs, or starts a local one that it also shuts down.
The ranks meet through torch.distributed at an address on rank 0's host, chosen by rank
0's actor; inside the model they talk as mp's workers do (NCCL on CUDA, gloo on the CPU).

Each step's input goes to every actor as the same portable arrays mp sends; the output
rank's answer (an ObjectRef) is read when the engine asks for it, so async scheduling
launches step k+1 before step k is read. Calls reach each actor in order. An actor that
dies or raises fails the executor with a WorkerFailure naming the rank, now and on every
later call; the other actors are killed at once (they may be waiting in a collective).
"""

from __future__ import annotations

import collections
import logging
import weakref
from typing import Any, Optional

from llmcore.executor.base import (Executor, RankReply, WorkerFailure, gather_replies,
                                   loading_waves)
from llmcore.executor.ray_utils import RayWorkerWrapper, connect_ray, first_line, import_ray
from llmcore.model_runner.step_io import ModelRunnerOutput, StepInput

logger = logging.getLogger(__name__)

# How long the placement group may wait for its resources (held by others, or a node
# still joining) before start-up fails naming them.
_PLACEMENT_TIMEOUT_S = 120.0


class _RayOutput:
    """PendingRunnerOutput of a step running in the actors: get() waits for its answer."""

    def __init__(self, executor: "RayExecutor", refs: list):
        self._executor = executor
        self._refs = refs
        self._done = False
        self._result: Optional[ModelRunnerOutput] = None

    def get(self) -> ModelRunnerOutput:
        while not self._done:
            self._executor._read_next_step()
        return self._result


class RayExecutor(Executor):
    def _init_executor(self) -> None:
        from llmcore.distributed.init import default_backend
        from llmcore.worker.rank_worker import output_rank

        cfg, pc = self.config, self.config.parallel_config
        cfg.validate()
        cfg.model_config.verify_tensor_parallel(pc.tensor_parallel_size)
        self.world_size = ws = pc.world_size
        self._output_rank = output_rank(cfg)
        self._ray = ray = import_ray()
        self._failure: Optional[str] = None
        self._unread: collections.deque = collections.deque()   # _RayOutput, launch order
        self.actors: list = []
        self._infos: list = []   # per rank: (node id, ip, pid, gpu ids)
        self._state = {"placement_group": None, "started_ray": False}
        self._finalizer = weakref.finalize(self, _release, ray, self.actors, self._state)
        try:
            self._state["started_ray"] = connect_ray(ray, num_cpus=ws)
            self._start_actors(default_backend(cfg.device))
        except BaseException:
            self._finalizer()
            raise
        logger.info("Ray executor: %d actors ready (pids %s)", ws, self.worker_pids)

    def _start_actors(self, backend: str) -> None:
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        ray, ws, cfg = self._ray, self.world_size, self.config
        on_gpu = cfg.device.type == "cuda"
        resource = "GPU" if on_gpu else "CPU"
        strategy = _placement_strategy(ray, resource, ws)
        pg = placement_group([{resource: 1}] * ws, strategy=strategy)
        self._state["placement_group"] = pg
        if not pg.wait(timeout_seconds=_PLACEMENT_TIMEOUT_S):
            raise RuntimeError(f"Ray could not reserve {ws} x {{{resource!r}: 1}} ({strategy}) "
                               f"within {_PLACEMENT_TIMEOUT_S:.0f} s; free now: "
                               f"{ray.available_resources().get(resource, 0):g} {resource}s")
        runtime_env = {"nsight": "default"} if cfg.parallel_config.ray_workers_use_nsight else None
        actor_cls = ray.remote(RayWorkerWrapper)
        for rank in range(ws):
            opts = dict(num_cpus=0 if on_gpu else 1, num_gpus=1 if on_gpu else 0,
                        scheduling_strategy=PlacementGroupSchedulingStrategy(
                            placement_group=pg, placement_group_bundle_index=rank))
            if runtime_env:
                opts["runtime_env"] = runtime_env
            self.actors.append(actor_cls.options(**opts).remote())
        self._infos = self._gather([a.node_info.remote() for a in self.actors])
        local_ranks = self._local_ranks(on_gpu)
        init_method = self._gather([self.actors[0].free_init_method.remote(self._infos[0][1])],
                                   ranks=[0])[0]
        self._gather([a.init_worker.remote(cfg, rank, ws, init_method, backend, self.eos_token_id,
                                           local_ranks[rank])
                      for rank, a in enumerate(self.actors)])
        for wave in loading_waves(ws, cfg.parallel_config.max_parallel_loading_workers):
            self._gather([self.actors[r].call.remote("load_model", (), {}) for r in wave],
                         ranks=wave)

    def _local_ranks(self, on_gpu: bool) -> list:
        """Each rank's device index on its host. On CUDA every actor of a host is shown all
        of the host's GPUs of this run, and picks its own among them."""
        by_node: dict = collections.defaultdict(list)
        for rank, (node, _, _, gpus) in enumerate(self._infos):
            by_node[node].append(rank)
        local = [0] * self.world_size
        for node, ranks in by_node.items():
            if on_gpu:
                node_gpus = sorted({g for r in ranks for g in self._infos[r][3]}, key=_gpu_key)
                self._gather([self.actors[r].set_visible_gpus.remote(node_gpus) for r in ranks],
                             ranks=ranks)
                for r in ranks:
                    local[r] = node_gpus.index(self._infos[r][3][0])
            else:
                for i, r in enumerate(ranks):
                    local[r] = i
        return local

    # ---------------------------------------------------------------- calls
    def collective_rpc(self, method: str, args: tuple = (), kwargs: Optional[dict] = None
                       ) -> list[Any]:
        self._drain()
        self._check()
        return self._gather([a.call.remote(method, args, kwargs or {}) for a in self.actors])

    def execute_model(self, step: StepInput) -> _RayOutput:
        self._check()
        step = step.portable()
        out = _RayOutput(self, [a.execute_model.remote(step) for a in self.actors])
        self._unread.append(out)
        return out

    def shutdown(self) -> None:
        if not self._finalizer.alive:
            return
        if self._failure is None:
            try:
                self._drain()
            except WorkerFailure:
                pass
        self._finalizer()

    @property
    def worker_pids(self) -> list[int]:
        return [info[2] for info in self._infos]

    @property
    def placement_group(self) -> Any:
        return self._state["placement_group"]

    @property
    def started_ray(self) -> bool:
        """Whether this executor started the Ray cluster (and shuts it down)."""
        return self._state["started_ray"]

    # ---------------------------------------------------------------- plumbing
    def _check(self) -> None:
        if self._failure is not None:
            raise WorkerFailure(self._failure)
        if not self._finalizer.alive:
            raise WorkerFailure("the Ray executor is shut down")

    def _drain(self) -> None:
        while self._unread:
            self._read_next_step()

    def _read_next_step(self) -> None:
        out = self._unread[0]
        results = self._gather(out._refs)
        self._unread.popleft()
        out._result, out._done = results[self._output_rank], True

    def _gather(self, refs: list, ranks: Optional[list] = None) -> list:
        """The answers of `refs` (one per rank in `ranks`, default all), or WorkerFailure as
        soon as one fails: the others may wait in a collective for it forever."""
        ray = self._ray
        ranks = list(range(len(refs))) if ranks is None else ranks
        ref_of = dict(zip(ranks, refs))

        def next_replies(waiting: set, block: bool):
            pending = [ref_of[r] for r in ranks if r in waiting]
            if block:
                ready = ray.wait(pending, num_returns=1)[0]
            else:
                ready = ray.wait(pending, num_returns=len(pending), timeout=0)[0]
            rank_of = {ref_of[r]: r for r in waiting}
            for ref in ready:
                yield self._reply(rank_of[ref], ref)

        return gather_replies(ranks, next_replies, self._fail, fail_fast=True)

    def _reply(self, rank: int, ref: Any) -> RankReply:
        ray = self._ray
        try:
            return RankReply(rank, ray.get(ref))
        except ray.exceptions.RayTaskError as e:
            error = f"failed: {_task_error_text(e)}"
        except ray.exceptions.RayError as e:
            error = f"died ({self._actor_text(rank)}): {first_line(e)}"
        return RankReply(rank, error=f"tensor-parallel worker rank {rank} {error}")

    def _actor_text(self, rank: int) -> str:
        if rank < len(self._infos):
            _, ip, pid, _ = self._infos[rank]
            return f"Ray actor pid {pid} on {ip}"
        return "Ray actor"

    def _fail(self, message: str) -> None:
        """Stop every actor and raise; every later call raises the same."""
        self._failure = message
        logger.error("Ray executor: %s; stopping the actors", message)
        self._finalizer()
        raise WorkerFailure(message)


def _placement_strategy(ray: Any, resource: str, world_size: int) -> str:
    """STRICT_PACK when one node has room for every rank, else PACK (ranks span nodes);
    a ValueError naming the numbers when the whole cluster has too few."""
    per_node = [n.get("Resources", {}).get(resource, 0) for n in ray.nodes() if n.get("Alive")]
    total = sum(per_node)
    if total < world_size:
        what = "GPUs" if resource == "GPU" else "CPUs"
        raise ValueError(f"tensor x pipeline parallel size {world_size} needs {world_size} "
                         f"{what}, but the Ray cluster has {total:g} ({len(per_node)} node(s): "
                         f"{', '.join(f'{n:g}' for n in per_node)})")
    return "STRICT_PACK" if max(per_node) >= world_size else "PACK"


def _gpu_key(gpu_id: str) -> tuple:
    return (0, int(gpu_id), "") if gpu_id.isdigit() else (1, 0, gpu_id)


def _task_error_text(e: Exception) -> str:
    cause = getattr(e, "cause", None)
    if cause is None:
        return str(e)
    return f"{type(cause).__name__}: {cause}\n{e}"


def _release(ray: Any, actors: list, state: dict) -> None:
    """Kill the actors, remove the placement group, and shut down a Ray started here."""
    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception as e:  # noqa: BLE001 - already gone, or Ray is shutting down
            logger.debug("Ray executor: kill failed: %s", e)
    actors.clear()
    pg = state.get("placement_group")
    if pg is not None:
        from ray.util.placement_group import remove_placement_group
        try:
            remove_placement_group(pg)
        except Exception as e:  # noqa: BLE001
            logger.debug("Ray executor: removing the placement group failed: %s", e)
        state["placement_group_removed"] = True
    if state.get("started_ray") and ray.is_initialized():
        ray.shutdown()
