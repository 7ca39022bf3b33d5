"""--engine-use-ray: the engine core as a Ray actor (engine/core_ray.py), against one
module-wide local Ray (2 CPUs: the ray_cluster fixture) on the tiny random Llama.

LLM(engine_use_ray=True) gives the in-process greedy tokens and its shutdown leaves no
actor and no process; the servers' AsyncLLM over tcp on the node's IP (as for an actor on
another host): a killed actor fails the in-flight request, the engine reports itself dead
and the OpenAI app's /health answers 503; the flag reaches the typed config, and the
actor's reservations follow the executor."""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import pytest
import zmq

from llmcore.config import EngineArgs
from llmcore.config.executor_backend import check_engine_use_ray
from llmcore.engine import core_ray
from llmcore.engine.core_client import EngineDeadError
from llmcore.engine.core_ray import RayCoreActorConfig, RayCoreLauncher, ray_core_actor_config

from pid_helpers import alive, wait_exited
from tiny_llama import CPU_ENGINE_ARGS, PROMPTS, cpu_llm, greedy_params, greedy_tokens

ray = pytest.importorskip("ray")

DEATH_BOUND_S = 60.0   # generous upper bound on an awaited event, not a sleep


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    from tiny_llama import save_tiny_llama

    return save_tiny_llama(str(tmp_path_factory.mktemp("tiny_llama_ray_core")),
                           max_position_embeddings=1024)


def test_llm_gives_in_process_tokens_and_shutdown_leaves_no_actor(ray_cluster, tiny):
    want = greedy_tokens(cpu_llm(tiny))
    llm = cpu_llm(tiny, engine_use_ray=True)
    engine = llm.llm_engine
    assert engine.core is None and engine.config.parallel_config.engine_use_ray
    launcher = engine.client._launcher
    assert isinstance(launcher, RayCoreLauncher)
    assert not launcher.started_ray                       # it joined the module's cluster
    actor, pid = launcher.actor, engine.client.core_pid
    assert pid == launcher.pid != os.getpid() and alive(pid)
    assert engine.client._tmpdir is not None              # same host: ipc sockets
    assert engine.num_device_blocks > 0                   # the core's ready info
    assert greedy_tokens(llm) == want
    assert greedy_tokens(llm, max_tokens=3) == [t[:3] for t in want]

    engine.shutdown()
    assert engine.client.exit_code == 0 and not engine.client.errored
    wait_exited([pid])
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.node.remote())                     # the actor is gone too
    assert not os.path.exists(engine.client._tmpdir)
    assert ray.is_initialized()                           # not ours to stop


async def test_killed_actor_fails_the_request_and_health_over_tcp(ray_cluster, tiny,
                                                                  monkeypatch):
    from llmcore.engine.async_llm import AsyncLLM
    from llmcore.entrypoints.openai.app import build_app

    # as if the actor were on another host: tcp on this node's IP, not ipc
    monkeypatch.setattr(core_ray, "remote_bind_host", lambda core, here, ip: ip)
    engine = AsyncLLM(EngineArgs(model=tiny, engine_use_ray=True, disable_log_stats=True,
                                 **{**CPU_ENGINE_ARGS, "max_model_len": 1024}))
    client = engine.client
    try:
        endpoint = client._input_socket.getsockopt_string(zmq.LAST_ENDPOINT)
        assert endpoint.startswith(f"tcp://{ray.util.get_node_ip_address()}:")
        last = None
        async for out in engine.generate({"prompt_token_ids": PROMPTS[1]}, greedy_params(),
                                         request_id="short"):
            last = out
        assert last.finished and len(last.outputs[0].token_ids) == 8
        app = build_app(engine)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://test") as http:
            assert (await http.get("/health")).status_code == 200

            stream = engine.generate({"prompt_token_ids": PROMPTS[0]}, greedy_params(1000),
                                     request_id="long").__aiter__()
            first = await stream.__anext__()
            assert not first.finished
            pid = client.core_pid
            os.kill(pid, signal.SIGSTOP)   # it cannot finish the request now
            os.kill(pid, signal.SIGKILL)
            err = await asyncio.wait_for(engine.wait_for_death(), DEATH_BOUND_S)
            assert isinstance(err, EngineDeadError) and "Ray actor died" in str(err)
            with pytest.raises(EngineDeadError):
                while True:
                    assert not (await stream.__anext__()).finished
            assert engine.errored
            assert (await http.get("/health")).status_code == 503
        with pytest.raises(EngineDeadError):
            engine.generate({"prompt_token_ids": PROMPTS[2]}, greedy_params())
    finally:
        engine.shutdown()
    assert client._launcher.actor is None
    wait_exited([pid])


def test_a_core_that_fails_to_build_is_a_startup_error_and_its_actor_ends(ray_cluster,
                                                                          monkeypatch):
    from llmcore.engine.core_client import CoreProcessConfig, EngineStartupError, SyncMPClient

    launchers = []
    init = RayCoreLauncher.__init__

    def remember(self, *args):
        init(self, *args)
        launchers.append(self)

    monkeypatch.setattr(RayCoreLauncher, "__init__", remember)
    # the factory raises inside the actor (its model folder does not exist)
    bad = EngineArgs(model="/nonexistent/model/path", device="cpu")
    with pytest.raises(EngineStartupError, match="(?i)engine core failed to start: "
                                                 "ValueError: .*no such file"):
        SyncMPClient(CoreProcessConfig("llmcore.engine.async_llm:engine_core_from_args",
                                       (bad, None), ray=RayCoreActorConfig()))
    (launcher,) = launchers
    assert launcher.actor is None and launcher.pid is not None
    wait_exited([launcher.pid])


def test_the_flag_reaches_the_config_and_needs_ray(tiny):
    config = EngineArgs(model=tiny, device="cpu", engine_use_ray=True).create_engine_config()
    assert config.parallel_config.engine_use_ray
    assert not EngineArgs(model=tiny, device="cpu").create_engine_config() \
        .parallel_config.engine_use_ray
    with pytest.raises(ValueError, match=r"--engine-use-ray needs Ray, which is not installed: "
                                         r"pip install ray"):
        check_engine_use_ray(True, False)
    check_engine_use_ray(False, False)


def test_the_actor_reserves_what_runs_in_it(tiny):
    def spec(tp, backend, device="cpu"):
        config = EngineArgs(model=tiny, device="cpu", tensor_parallel_size=tp,
                            distributed_executor_backend=backend).create_engine_config()
        if device == "cuda":   # as the front end of a GPU host resolves it
            import torch
            config.device_config.device = torch.device("cuda")
        return ray_core_actor_config(config)

    assert spec(1, None) == RayCoreActorConfig(num_cpus=1, num_gpus=0, local_ray_cpus=1)
    assert spec(2, "mp") == RayCoreActorConfig(num_cpus=2, num_gpus=0, local_ray_cpus=2)
    assert spec(2, "ray") == RayCoreActorConfig(num_cpus=1, num_gpus=0, local_ray_cpus=3)
    assert spec(1, None, "cuda") == RayCoreActorConfig(num_cpus=1, num_gpus=1, local_ray_cpus=1)
    assert spec(4, "mp", "cuda") == RayCoreActorConfig(num_cpus=1, num_gpus=4, local_ray_cpus=1)
    assert spec(4, "ray", "cuda").num_gpus == 0          # the rank actors reserve their GPUs
