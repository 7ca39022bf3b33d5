"""Which executor runs the workers: `--distributed-executor-backend` and its Ray flags
(--engine-use-ray too), resolved once when the engine config is built (vLLM's rules)."""

from __future__ import annotations

import importlib.util
import logging
import shutil
from typing import Optional

logger = logging.getLogger(__name__)


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def resolve_executor_backend(backend: Optional[str], worker_use_ray: bool, world_size: int,
                             device_type: str, ray_is_installed: bool) -> Optional[str]:
    """"ray", "mp", or None (one worker in the engine's own process).

    Unset: Ray when the run spans more than one GPU and Ray is installed, mp otherwise
    (always mp on the CPU); a single device runs in-process. --worker-use-ray is the
    deprecated spelling of --distributed-executor-backend ray."""
    if worker_use_ray:
        logger.warning("--worker-use-ray is deprecated: use --distributed-executor-backend ray")
        if backend not in (None, "ray"):
            raise ValueError(f"--worker-use-ray contradicts --distributed-executor-backend "
                             f"{backend}: drop one of them")
        backend = "ray"
    if backend == "ray" and not ray_is_installed:
        raise ValueError("--distributed-executor-backend ray needs Ray, which is not installed: "
                         "pip install ray (or pip install 'llmcore[ray]')")
    if backend is not None:
        return backend
    if world_size == 1:
        return None
    return "ray" if device_type == "cuda" and ray_is_installed else "mp"


def check_ray_workers_use_nsight(enabled: bool, backend: Optional[str]) -> None:
    """--ray-workers-use-nsight profiles each Ray worker under Nsight Systems' nsys."""
    if not enabled:
        return
    if backend != "ray":
        raise ValueError("--ray-workers-use-nsight needs the Ray executor "
                         "(--distributed-executor-backend ray); the backend here is "
                         f"{backend or 'the engine process itself (one device)'}")
    if shutil.which("nsys") is None:
        raise ValueError("--ray-workers-use-nsight needs NVIDIA Nsight Systems: `nsys` is not on "
                         "PATH (install Nsight Systems, or drop the flag)")


def check_engine_use_ray(enabled: bool, ray_is_installed: bool) -> None:
    """--engine-use-ray starts the engine core as a Ray actor: Ray must be installed."""
    if enabled and not ray_is_installed:
        raise ValueError("--engine-use-ray needs Ray, which is not installed: pip install ray "
                         "(or pip install 'llmcore[ray]')")
