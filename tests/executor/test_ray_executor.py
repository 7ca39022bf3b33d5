"""The Ray executor on the CPU (gloo, fp32) against one module-wide local Ray cluster
(2 CPUs: the ray_cluster fixture): TP=2 gives TP=1's greedy tokens, sync and async, and so
does PP=2 with two micro-batches in flight;
deletion leaves no actor and no placement group; a killed or raising actor fails the
engine naming its rank; joining vs starting a cluster; the backend flags resolve as
vLLM's."""

from __future__ import annotations

import gc
import logging
import os
import signal

import pytest

from llmcore import LLM
from llmcore.config import EngineArgs
from llmcore.config.executor_backend import resolve_executor_backend
from llmcore.executor import RayExecutor, WorkerFailure
from llmcore.executor.ray_utils import connect_ray

from pid_helpers import wait_exited
from tiny_llama import cpu_llm, greedy_tokens

ray = pytest.importorskip("ray")

def _ray_executor(llm: LLM) -> RayExecutor:
    ex = llm.llm_engine.core.executor
    assert isinstance(ex, RayExecutor)
    return ex


def _pg_state(pg) -> str:
    return ray.util.placement_group_table(pg)["state"]


@pytest.fixture(scope="module")
def tp1_tokens(tiny_llama) -> list:
    return greedy_tokens(cpu_llm(tiny_llama, 1))


def test_tp2_greedy_tokens_equal_tp1_and_shutdown_releases_everything(
        ray_cluster, tiny_llama, tp1_tokens):
    # (mp's TP=2 gives TP=1's tokens too: test_multiproc.py; both side by side, with their
    # start-up times: benchmarks/executor_startup.py)
    llm = cpu_llm(tiny_llama, 2, distributed_executor_backend="ray")
    ex = _ray_executor(llm)
    assert not ex.started_ray                   # it joined the module's cluster
    pids = ex.worker_pids
    assert len(pids) == 2 and len(set(pids)) == 2 and os.getpid() not in pids
    pg = ex.placement_group
    assert _pg_state(pg) == "CREATED"
    assert ray.util.placement_group_table(pg)["strategy"] == "STRICT_PACK"
    assert greedy_tokens(llm) == tp1_tokens
    assert greedy_tokens(llm) == tp1_tokens           # sampling state released and reused
    blocks = ex.collective_rpc("determine_num_blocks")
    assert len(blocks) == 2 and blocks[0] == blocks[1]   # every rank answers, in rank order

    del llm, ex                                 # the executor's finalizer releases it all
    gc.collect()
    wait_exited(pids)
    assert _pg_state(pg) == "REMOVED"
    assert ray.is_initialized()                 # not ours to shut down


def test_pp2_micro_batches_two_in_flight_give_tp1_tokens(ray_cluster, tiny_llama, tp1_tokens):
    # pipeline stages as actors: two micro-batches out at once, answered in launch order
    llm = cpu_llm(tiny_llama, 1, 2, distributed_executor_backend="ray")
    ex = _ray_executor(llm)
    assert llm.llm_engine.core.scheduler.config.num_micro_batches == 2
    launch, most = ex.execute_model, []

    def counting(step):
        out = launch(step)
        most.append(len(ex._unread))
        return out

    ex.execute_model = counting
    assert greedy_tokens(llm) == tp1_tokens
    assert max(most) == 2
    del ex.execute_model, counting, launch   # (they hold the executor)
    pids = ex.worker_pids
    del llm, ex
    gc.collect()
    wait_exited(pids)


def test_async_scheduling_then_a_killed_actor_fails_the_engine_naming_its_rank(
        ray_cluster, tiny_llama, tp1_tokens):
    llm = cpu_llm(tiny_llama, 2, distributed_executor_backend="ray", async_scheduling=True)
    assert llm.llm_engine.async_scheduling
    ex = _ray_executor(llm)
    pids, pg = ex.worker_pids, ex.placement_group
    assert greedy_tokens(llm) == tp1_tokens
    os.kill(pids[1], signal.SIGKILL)
    with pytest.raises(WorkerFailure, match=rf"rank 1 died \(Ray actor pid {pids[1]} on "):
        greedy_tokens(llm)
    wait_exited(pids)                          # rank 0 (stuck in a collective) was killed
    assert _pg_state(pg) == "REMOVED"
    with pytest.raises(WorkerFailure, match="rank 1 died"):
        greedy_tokens(llm)                            # and the engine stays failed
    del llm, ex
    gc.collect()


def test_an_actor_that_raises_fails_the_engine_with_its_error(ray_cluster, tiny_llama):
    llm = cpu_llm(tiny_llama, 2, distributed_executor_backend="ray")
    ex = _ray_executor(llm)
    pids, pg = ex.worker_pids, ex.placement_group
    with pytest.raises(WorkerFailure, match=r"rank \d failed: AttributeError: .*no_such_method"):
        ex.collective_rpc("no_such_method")
    wait_exited(pids)                          # every actor was stopped
    assert _pg_state(pg) == "REMOVED"
    with pytest.raises(WorkerFailure, match=r"rank \d failed"):
        greedy_tokens(llm)
    llm.llm_engine.core.shutdown()              # after a failure: nothing left to do, no error
    with pytest.raises(WorkerFailure, match=r"rank \d failed"):
        ex.collective_rpc("determine_num_blocks")


def test_more_ranks_than_the_cluster_holds_fail_naming_the_numbers(ray_cluster, tiny_llama):
    with pytest.raises(ValueError, match=r"parallel size 4 needs 4 CPUs, but the Ray cluster "
                                         r"has 2 \(1 node"):
        cpu_llm(tiny_llama, 4, distributed_executor_backend="ray")
    # nothing reserved: every placement group of the module's tests is removed
    assert all(p["state"] == "REMOVED" for p in ray.util.placement_group_table().values())


# ---------------------------------------------------------------- flags (no Ray start)
@pytest.mark.parametrize("backend,use_ray,world,device,installed,want", [
    (None, False, 1, "cuda", True, None),       # one device: in the engine's process
    (None, False, 1, "cpu", True, None),
    (None, False, 2, "cuda", True, "ray"),      # several GPUs and Ray installed: Ray
    (None, False, 8, "cuda", False, "mp"),      # ... without Ray: mp
    (None, False, 2, "cpu", True, "mp"),        # the CPU keeps mp
    ("mp", False, 2, "cuda", True, "mp"),
    ("ray", False, 2, "cpu", True, "ray"),
    ("ray", False, 1, "cpu", True, "ray"),
    (None, True, 2, "cpu", True, "ray"),        # --worker-use-ray
    (None, True, 1, "cuda", True, "ray"),
])
def test_default_backend_resolution(backend, use_ray, world, device, installed, want):
    assert resolve_executor_backend(backend, use_ray, world, device, installed) == want


def test_worker_use_ray_is_a_deprecated_alias(caplog, tiny_llama):
    with caplog.at_level(logging.WARNING, logger="llmcore.config.executor_backend"):
        config = EngineArgs(model=tiny_llama, tensor_parallel_size=2, device="cpu",
                            worker_use_ray=True).create_engine_config()
    assert config.parallel_config.distributed_executor_backend == "ray"
    assert "--worker-use-ray is deprecated: use --distributed-executor-backend ray" in caplog.text
    with pytest.raises(ValueError, match="--worker-use-ray contradicts "
                                         "--distributed-executor-backend mp"):
        resolve_executor_backend("mp", True, 2, "cpu", True)


def test_ray_missing_or_nsys_missing_fail_clearly(tiny_llama, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"needs Ray, which is not installed: pip install ray "
                                         r"\(or pip install 'llmcore\[ray\]'\)"):
        resolve_executor_backend("ray", False, 2, "cpu", False)
    from llmcore.executor.ray_utils import import_ray
    monkeypatch.setitem(__import__("sys").modules, "ray", None)   # as if not installed
    with pytest.raises(RuntimeError, match=r"needs Ray, which is not installed .*pip install ray"):
        import_ray()
    monkeypatch.undo()

    monkeypatch.setenv("PATH", str(tmp_path))   # no nsys on it
    args = dict(model=tiny_llama, tensor_parallel_size=2, device="cpu")
    with pytest.raises(ValueError, match="--ray-workers-use-nsight needs NVIDIA Nsight Systems: "
                                         "`nsys` is not on PATH"):
        EngineArgs(**args, distributed_executor_backend="ray",
                   ray_workers_use_nsight=True).create_engine_config()
    with pytest.raises(ValueError, match="--ray-workers-use-nsight needs the Ray executor"):
        EngineArgs(**args, distributed_executor_backend="mp",
                   ray_workers_use_nsight=True).create_engine_config()


class _FakeRay:
    """What connect_ray sees of Ray: whether it is initialized, and ray.init."""

    def __init__(self, initialized=False, cluster_running=False):
        self.initialized, self.cluster_running, self.calls = initialized, cluster_running, []

    def is_initialized(self):
        return self.initialized

    def init(self, address=None, **kw):
        self.calls.append((address, kw))
        if address == "auto" and not self.cluster_running:
            raise ConnectionError("Could not find any running Ray instance.")
        self.initialized = True


def test_connect_ray_joins_a_running_cluster_else_starts_a_small_local_one(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    fake = _FakeRay(initialized=True)                    # this process already joined one
    assert connect_ray(fake, num_cpus=2) is False and fake.calls == []
    fake = _FakeRay(cluster_running=True)                # `ray start` / RAY_ADDRESS
    assert connect_ray(fake, num_cpus=2) is False
    assert [c[0] for c in fake.calls] == ["auto"]
    fake = _FakeRay()                                    # none: a local one, ours to stop
    assert connect_ray(fake, num_cpus=3) is True
    (addr, kw), = fake.calls[1:]
    assert addr is None and kw["num_cpus"] == 3 and kw["include_dashboard"] is False
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")   # named but unreachable: no fallback
    fake = _FakeRay()
    with pytest.raises(RuntimeError, match="cannot reach the Ray cluster at "
                                           "RAY_ADDRESS=10.0.0.9:6379"):
        connect_ray(fake, num_cpus=2)
    assert len(fake.calls) == 1
