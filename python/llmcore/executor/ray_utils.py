"""Ray plumbing of the Ray executor (and of the engine core's actor, engine/core_ray.py):
importing Ray, joining or starting a cluster, and the actor class that holds one rank's
Worker.

This module imports Ray only inside its functions, so llmcore imports without Ray; the
actor class is a plain class made remote at start-up, and each actor process imports this
module by name (llmcore must be installed on every host of the cluster)."""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

logger = logging.getLogger(__name__)

RAY_INSTALL_HINT = "pip install ray (or pip install 'llmcore[ray]')"

# Object store of a Ray started here: only step inputs and outputs travel through it
# (kilobytes to a few megabytes per step), so its default (30% of RAM) is far too much.
_LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024


def import_ray(flag: str = "--distributed-executor-backend ray") -> Any:
    try:
        import ray
    except ImportError as e:
        raise RuntimeError(f"{flag} needs Ray, which is not installed ({e}): "
                           f"{RAY_INSTALL_HINT}") from None
    return ray


def first_line(e: BaseException) -> str:
    """The first line of a (Ray) error's text: its tracebacks follow."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def connect_ray(ray: Any, num_cpus: int, user: str = "Ray executor") -> bool:
    """Join the Ray cluster this process already joined, or the one `ray start` / RAY_ADDRESS
    names (ray.init(address="auto")); else start a local one with `num_cpus` CPUs.
    True when the cluster was started here (and is ours to shut down)."""
    if ray.is_initialized():
        return False
    quiet = dict(logging_level=logging.WARNING, configure_logging=True)
    try:
        ray.init(address="auto", **quiet)
        logger.info("%s: joined the running Ray cluster", user)
        return False
    except ConnectionError as e:
        # RAY_ADDRESS is Ray's own setting: a cluster named there and not reachable is an
        # error, not a reason to start another one.
        if os.environ.get("RAY_ADDRESS"):
            raise RuntimeError(f"cannot reach the Ray cluster at RAY_ADDRESS="
                               f"{os.environ['RAY_ADDRESS']}: {e}") from None
    try:
        ray.init(num_cpus=num_cpus, include_dashboard=False,
                 object_store_memory=_LOCAL_OBJECT_STORE_BYTES, **quiet)
    except Exception as e:
        raise RuntimeError(f"could not start a local Ray cluster ({num_cpus} CPUs): "
                           f"{type(e).__name__}: {e}") from e
    logger.info("%s: started a local Ray cluster (%d CPUs)", user, num_cpus)
    return True


class RayWorkerWrapper:
    """The body of one rank's Ray actor: the same Worker as mp's worker processes."""

    def __init__(self) -> None:
        os.environ["NCCL_NVLS_ENABLE"] = "0"   # before NCCL reads it: NVLink multicast stays off
        self.worker = None

    def node_info(self) -> tuple:
        """(node id, node IP, pid, GPU ids Ray gave this actor)."""
        import ray

        return (ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address(),
                os.getpid(), [str(g) for g in ray.get_gpu_ids()])

    def free_init_method(self, host: str) -> str:
        """A torch.distributed rendezvous address on this actor's host (rank 0's)."""
        from llmcore.distributed.init import free_tcp_init_method

        return free_tcp_init_method(host)

    def set_visible_gpus(self, gpu_ids: list) -> None:
        """Every rank of a host sees all of the host's GPUs of this run (NCCL's peer-to-peer
        paths need them), before CUDA is first touched."""
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)

    def init_worker(self, config: Any, rank: int, world_size: int, init_method: str,
                    backend: str, eos_token_id: Optional[int], local_rank: int) -> None:
        from llmcore.worker.rank_worker import create_rank_worker

        self.worker = create_rank_worker(config, rank, world_size, init_method, backend,
                                         eos_token_id, local_rank=local_rank)

    def execute_model(self, step: Any) -> Any:
        from llmcore.worker.rank_worker import run_step

        return run_step(self.worker, _writable(step))

    def call(self, method: str, args: tuple, kwargs: dict) -> Any:
        return getattr(self.worker, method)(*args, **kwargs)


def _writable(step: Any) -> Any:
    """Ray hands numpy arguments over as read-only views of its buffers (zero copy); the
    runner turns plan arrays into tensors sharing their memory and may write to them."""
    import dataclasses

    import numpy as np

    for obj in (step, step.plan):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, np.ndarray) and not value.flags.writeable:
                setattr(obj, f.name, value.copy())
    return step
