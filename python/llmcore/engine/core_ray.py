"""The engine core as a Ray actor (--engine-use-ray): the same core loop, sockets and
messages as the engine-core process (core_proc.py), in an actor of the Ray cluster this
front end joins (`ray start` / RAY_ADDRESS), or of a local one it starts and stops.

The actor is placed on the head node when it has room (soft affinity: elsewhere when it
lacks the resources). Its client binds the ZeroMQ sockets as for a process: ipc when the
actor runs on this host; otherwise tcp on this host's IP as Ray knows it (reachable from
the cluster's nodes; like Ray's own ports, not authenticated: a trusted network only),
and the actor connects.

Start-up: `node()` (where it runs), then `start()` builds the core and returns its
msgpack-encoded ReadyMessage, then `serve()` runs the core until SHUTDOWN. Death: the
client's watcher waits on the `serve()` call, which fails when the actor dies (killed,
its node lost, the front end gone: Ray ends the actors a driver owns). Stopping kills the
actor, and a Ray started here is shut down.

Ray itself is imported only inside functions, so llmcore imports without it.
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import msgspec

from llmcore.engine.core_errors import EngineStartupError
from llmcore.engine.core_launcher import CoreLauncher
from llmcore.engine.core_proc import CoreRunner, ReadyMessage, start_core

if TYPE_CHECKING:  # pragma: no cover
    from llmcore.config.engine_config import EngineConfig

logger = logging.getLogger(__name__)

# How long the actor may wait for its resources (held by others, or a node still joining).
_PLACEMENT_TIMEOUT_S = 120.0
# After ray.kill, how long to wait for the actor's serving call to fail (it takes well
# under a second; a bound so that a wedged Ray cannot hang the front end's shutdown).
_KILL_WAIT_S = 30.0
_HEAD_NODE_RESOURCE = "node:__internal_head__"


@dataclass(frozen=True)
class RayCoreActorConfig:
    """What the engine core's actor reserves, and where it goes."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    on_head_node: bool = True    # preferred, not required
    local_ray_cpus: int = 1      # CPUs of a local Ray started here when none is running


def ray_core_actor_config(config: "EngineConfig") -> RayCoreActorConfig:
    """The actor's reservation: the ranks that run in its own process tree (one in-process
    worker, or the mp executor's processes) are counted there; the Ray executor's ranks
    are actors of their own and reserve for themselves."""
    pc = config.parallel_config
    backend = pc.distributed_executor_backend
    ranks_inside = 0 if backend == "ray" else pc.world_size
    if config.device.type == "cuda":
        return RayCoreActorConfig(num_cpus=1, num_gpus=ranks_inside, local_ray_cpus=1)
    num_cpus = max(1, ranks_inside)
    return RayCoreActorConfig(num_cpus=num_cpus, num_gpus=0,
                              local_ray_cpus=num_cpus + (pc.world_size if backend == "ray" else 0))


def remote_bind_host(core_node_id: str, this_node_id: str, this_node_ip: str) -> Optional[str]:
    """None: the core runs on this host (ipc sockets do); else the IP to bind tcp on."""
    return None if core_node_id == this_node_id else this_node_ip


class EngineCoreActor:
    """The body of the engine core's actor (a plain class, made remote at start-up)."""

    def __init__(self) -> None:
        self._core: Any = None

    def node(self) -> tuple[str, int]:
        """(Ray node id, pid) of this actor."""
        import ray

        return ray.get_runtime_context().get_node_id(), os.getpid()

    def start(self, core_factory: str, factory_args: tuple) -> bytes:
        """Builds the core; its ReadyMessage (ok, or naming the error), msgpack-encoded."""
        self._core, ready = start_core(core_factory, factory_args)
        return msgspec.msgpack.encode(ready)

    def serve(self, input_addr: str, output_addr: str) -> int:
        """Serves the core built by start() until SHUTDOWN; 0, or 1 when it failed."""
        if self._core is None:
            return 1   # start() failed, and said so
        runner = CoreRunner(self._core, input_addr, output_addr)
        self._core = None
        exit_code = 0
        try:
            logger.info("engine core stopping: %s", runner.run())
        except BaseException:  # noqa: BLE001 - the front end sees the exit code
            logger.error("engine core failed:\n%s", traceback.format_exc())
            exit_code = 1
        finally:
            if not runner.close():
                exit_code = exit_code or 1
        return exit_code


class RayCoreLauncher(CoreLauncher):
    """Starts the engine core's actor and watches its serving call."""

    death_detail = "engine core Ray actor died"

    def __init__(self, core_factory: str, factory_args: tuple, spec: RayCoreActorConfig):
        from llmcore.executor.ray_utils import import_ray

        self._ray = import_ray("--engine-use-ray")
        self._factory = core_factory
        self._args = tuple(factory_args)
        self._spec = spec
        self.actor: Any = None           # the handle, until stop()
        self.node_id: Optional[str] = None
        self.pid: Optional[int] = None
        self.started_ray = False         # this launcher started the Ray cluster (and stops it)
        self.exit_code: Optional[int] = None
        self._start_ref: Any = None
        self._serve_ref: Any = None
        self._exited = threading.Event()

    def place(self) -> Optional[str]:
        from llmcore.executor.ray_utils import connect_ray, first_line

        ray, spec = self._ray, self._spec
        self.started_ray = connect_ray(ray, num_cpus=spec.local_ray_cpus, user="engine core")
        opts: dict = dict(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus)
        head = _head_node_id(ray) if spec.on_head_node else None
        if head is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=head, soft=True)
        self.actor = ray.remote(EngineCoreActor).options(**opts).remote()
        try:
            self.node_id, self.pid = ray.get(self.actor.node.remote(),
                                             timeout=_PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            free = ray.available_resources()
            raise EngineStartupError(
                f"Ray could not place the engine core actor ({spec.num_cpus:g} CPUs, "
                f"{spec.num_gpus:g} GPUs) within {_PLACEMENT_TIMEOUT_S:.0f} s; free now: "
                f"{free.get('CPU', 0):g} CPUs, {free.get('GPU', 0):g} GPUs") from None
        except ray.exceptions.RayError as e:
            raise EngineStartupError(
                f"the engine core Ray actor did not start: {first_line(e)}") from None
        logger.info("engine core: Ray actor pid %d on node %s", self.pid, self.node_id)
        return remote_bind_host(self.node_id, ray.get_runtime_context().get_node_id(),
                                ray.util.get_node_ip_address())

    def start(self, input_addr: str, output_addr: str) -> None:
        # calls reach an actor in order: serve() runs once start() has returned
        self._start_ref = self.actor.start.remote(self._factory, self._args)
        self._serve_ref = self.actor.serve.remote(input_addr, output_addr)
        threading.Thread(target=self._watch, name="core-actor-watch", daemon=True).start()

    def wait_ready(self, timeout_s: Optional[float]) -> ReadyMessage:
        from llmcore.executor.ray_utils import first_line

        ray = self._ray
        try:
            raw = ray.get(self._start_ref, timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise EngineStartupError(f"engine core not ready after {timeout_s} s") from None
        except ray.exceptions.RayTaskError as e:
            raise EngineStartupError(f"engine core failed to start: {first_line(e)}") from None
        except ray.exceptions.RayError as e:
            raise EngineStartupError(
                f"engine core Ray actor died during start-up: {first_line(e)}") from None
        msg = msgspec.msgpack.decode(raw, type=ReadyMessage)
        if not msg.ok:
            raise EngineStartupError(f"engine core failed to start: {msg.error}")
        return msg

    def _watch(self) -> None:
        """The only thread that waits on the serving call (stop() waits for it to end
        before a Ray started here is shut down)."""
        from llmcore.executor.ray_utils import first_line

        ray = self._ray
        try:
            self.exit_code = int(ray.get(self._serve_ref))
        except ray.exceptions.RayError as e:
            self.death_detail = f"engine core Ray actor died: {first_line(e)}"
        except Exception as e:  # noqa: BLE001 - Ray itself gone: the core is unreachable
            self.death_detail = f"engine core Ray actor unreachable: {type(e).__name__}: {e}"
        finally:
            self._exited.set()

    def wait_exit(self) -> None:
        self._exited.wait()

    def is_alive(self) -> bool:
        return self._serve_ref is not None and not self._exited.is_set()

    def join(self, timeout_s: float) -> None:
        self._exited.wait(timeout_s)

    def stop(self) -> None:
        ray = self._ray
        actor, self.actor = self.actor, None
        if actor is not None and ray.is_initialized():
            try:
                ray.kill(actor, no_restart=True)
            except Exception as e:  # noqa: BLE001 - already gone, or Ray is shutting down
                logger.debug("engine core: ray.kill failed: %s", e)
            if self._serve_ref is not None and not self._exited.wait(_KILL_WAIT_S):
                logger.warning("engine core: the Ray actor did not end %.0f s after ray.kill",
                               _KILL_WAIT_S)
        if self.started_ray:
            self.started_ray = False
            if ray.is_initialized():
                ray.shutdown()


def _head_node_id(ray: Any) -> Optional[str]:
    for node in ray.nodes():
        if node.get("Alive") and _HEAD_NODE_RESOURCE in node.get("Resources", {}):
            return node["NodeID"]
    return None
