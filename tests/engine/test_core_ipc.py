"""The engine-core process and its clients, against tests/engine/fake_core.py."""

from __future__ import annotations

import asyncio
import os
import pathlib
import pickle
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import zmq

from llmcore.engine.core_client import (
    AsyncMPClient,
    CoreProcessConfig,
    EngineDeadError,
    EngineStartupError,
    InprocClient,
    SyncMPClient,
    UtilityCallError,
)
from llmcore.engine.core_types import EngineCoreRequest, EngineCoreRequestType, SchedulerStats
from llmcore.sampling_params import SamplingParams

import fake_core

FAKE = "fake_core:FakeEngineCore"
DEATH_BOUND_S = 30.0  # generous upper bound on an awaited event, not a sleep


def make_request(rid: str, prompt=(5, 6, 7), max_tokens: int = 3, logprobs=None):
    return EngineCoreRequest(request_id=rid, prompt_token_ids=list(prompt),
                             sampling_params=SamplingParams(max_tokens=max_tokens,
                                                            logprobs=logprobs),
                             max_tokens=max_tokens, arrival_time=time.time())


def collect_until_finished(get_output, request_ids) -> dict:
    """request id -> (tokens, finish_reason, error), for every id in request_ids."""
    tokens: dict = {rid: [] for rid in request_ids}
    finished: dict = {}
    wanted = set(request_ids)
    while not wanted <= finished.keys():
        for out in get_output().outputs:
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
            if out.finish_reason is not None and out.request_id in wanted:
                finished[out.request_id] = (tokens[out.request_id], out.finish_reason, out.error)
    return finished


def wait_pid_gone(pid: int, timeout: float) -> bool:
    """Waits on a pidfd (an event) for the process to end; True when it did."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def client():
    c = SyncMPClient(CoreProcessConfig(FAKE, (32,)))
    yield c
    c.shutdown()


# ------------------------------------------------------------------ in process
def test_inproc_client_steps_the_core_and_reports_refusals():
    c = InprocClient(fake_core.FakeEngineCore())
    c.add_request(make_request("a", max_tokens=2))
    c.add_request(make_request("bad", prompt=()))
    done = collect_until_finished(c.get_output, ["a", "bad"])
    assert done["a"] == ([8, 9], "length", None)
    assert done["bad"][1] == "error" and "prompt is empty" in done["bad"][2]
    assert c.call_utility("ping") == "pong"
    assert not c.has_unfinished_requests()


# ------------------------------------------------------------------ over the process
def test_ready_info_and_round_trip(client):
    assert client.ready_info == {"num_gpu_blocks": 32, "model": "fake"}
    assert client.call_utility("pid") == client.core_pid != os.getpid()
    client.add_request(make_request("r1", prompt=(1,), max_tokens=3))
    client.add_request(make_request("r2", prompt=(10, 20), max_tokens=1, logprobs=2))
    done = collect_until_finished(client.get_output, ["r1", "r2"])
    assert done["r1"] == ([2, 3, 4], "length", None)
    assert done["r2"] == ([21], "length", None)


def test_logprobs_cross_the_socket(client):
    client.add_request(make_request("lp", prompt=(3,), max_tokens=1, logprobs=2))
    out = next(o for o in client.get_output().outputs if o.request_id == "lp")
    assert out.new_token_logprobs == [-0.5]
    assert out.new_logprobs.topk_ids == [[4, 5]] and out.new_logprobs.topk_logprobs == [[-0.5, -1.5]]


def test_add_request_error_comes_back_and_core_keeps_serving(client):
    client.add_request(make_request("empty", prompt=()))
    client.add_request(make_request("dup", max_tokens=10 ** 9))
    client.add_request(make_request("dup", max_tokens=1))  # refused: "dup" is running
    client.add_request(make_request("ok", max_tokens=1))
    done = collect_until_finished(client.get_output, ["empty", "dup", "ok"])
    assert done["empty"][1] == "error" and "the prompt is empty" in done["empty"][2]
    assert done["dup"][1] == "error" and "duplicate" in done["dup"][2]
    assert done["ok"] == ([8], "length", None)
    client.abort_requests(["dup"])
    assert client.call_utility("ping") == "pong"
    assert client.call_utility("leftovers")["running"] == 0


def test_utility_calls(client):
    assert client.call_utility("ping") == "pong"
    assert client.call_utility("echo", 1, "two", [3.0]) == [1, "two", [3.0]]
    stats = client.call_utility("get_stats", result_type=SchedulerStats)
    assert isinstance(stats, SchedulerStats) and stats.num_total_blocks == 32
    with pytest.raises(UtilityCallError, match="ValueError: boom"):
        client.call_utility("fail", "boom")
    for refused in ("no_such_method", "_private", "__init__", "step", "shutdown", "add_request"):
        with pytest.raises(UtilityCallError):
            client.call_utility(refused)
    assert client.call_utility("ping") == "pong"


class _CreatesMarker:
    """Unpickling this would create a file: proof that the core ran pickle."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_pickle_and_garbage_frames_are_refused(client, tmp_path):
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_CreatesMarker(str(marker)))
    raw = client._input_socket  # the front end's own socket: a peer that sends junk
    for kind in EngineCoreRequestType:
        raw.send_multipart([kind.value, payload])
    raw.send_multipart([b"\x09", b"\x00"])                      # unknown type byte
    raw.send_multipart([EngineCoreRequestType.ADD.value, b"\xc1garbage"])
    raw.send_multipart([EngineCoreRequestType.ABORT.value, b"\x81\xa1a\x01"])  # a map
    raw.send_multipart([EngineCoreRequestType.ADD.value, b"x", b"y", b"z"])  # 3 frames
    raw.send_multipart([b""])
    # Frames are handled in order: once this answers, all of the above were seen.
    assert client.call_utility("ping") == "pong"
    assert not marker.exists()
    client.add_request(make_request("after-junk", max_tokens=2))
    assert collect_until_finished(client.get_output, ["after-junk"])["after-junk"][1] == "length"


def test_200_requests_half_aborted(client):
    ids = [f"many-{i}" for i in range(200)]
    for rid in ids:
        client.add_request(make_request(rid, max_tokens=20))
    aborted, kept = ids[::2], ids[1::2]
    client.abort_requests(aborted)
    done = collect_until_finished(client.get_output, kept)
    assert all(done[rid][1] == "length" and len(done[rid][0]) == 20 for rid in kept)
    left = client.call_utility("leftovers")
    assert left["running"] == 0
    assert client.call_utility("has_unfinished_requests") is False


# ------------------------------------------------------------------ process life
def test_startup_failure_is_a_clear_error():
    with pytest.raises(EngineStartupError, match="RuntimeError: no such model"):
        SyncMPClient(CoreProcessConfig(FAKE, (8, "no such model")))
    with pytest.raises(EngineStartupError, match="module:qualname"):
        SyncMPClient(CoreProcessConfig("fake_core.FakeEngineCore"))


async def test_async_client_and_kill9_fails_in_flight_calls():
    c = AsyncMPClient(CoreProcessConfig(FAKE, (16,)))
    try:
        await c.add_request_async(make_request("a1", prompt=(1,), max_tokens=2))
        tokens: list = []
        finish_reason = None
        while finish_reason is None:
            for out in (await c.get_output_async()).outputs:
                tokens.extend(out.new_token_ids)
                finish_reason = out.finish_reason
        assert (tokens, finish_reason) == ([2, 3], "length")
        assert await c.call_utility_async("echo", 7) == [7]
        await c.abort_requests_async(["nothing"])

        in_flight = asyncio.ensure_future(c.get_output_async())
        await asyncio.sleep(0)  # let it block on the queue
        os.kill(c.core_pid, signal.SIGKILL)
        err = await asyncio.wait_for(c.wait_for_death(), DEATH_BOUND_S)
        assert err.exit_code == -signal.SIGKILL and c.errored
        with pytest.raises(EngineDeadError, match="exit code -9"):
            await asyncio.wait_for(in_flight, DEATH_BOUND_S)
        with pytest.raises(EngineDeadError):
            await c.call_utility_async("ping")
        with pytest.raises(EngineDeadError):
            await c.add_request_async(make_request("late"))
    finally:
        c.shutdown()


def test_kill9_fails_blocked_sync_calls_over_tcp():
    c = SyncMPClient(CoreProcessConfig(FAKE, transport="tcp"))
    try:
        assert c.call_utility("ping") == "pong"
        errors: list = []
        started = threading.Event()

        def blocked_get_output():
            started.set()
            try:
                c.get_output()
            except EngineDeadError as e:
                errors.append(e)

        t = threading.Thread(target=blocked_get_output)
        t.start()
        started.wait()
        os.kill(c.core_pid, signal.SIGKILL)
        assert c.wait_for_death_sync(DEATH_BOUND_S)
        t.join(DEATH_BOUND_S)
        assert len(errors) == 1 and errors[0].exit_code == -signal.SIGKILL
        with pytest.raises(EngineDeadError):
            c.call_utility("ping")
    finally:
        c.shutdown()


def test_sigterm_to_core_exits_0():
    c = SyncMPClient(CoreProcessConfig(FAKE))
    try:
        os.kill(c.core_pid, signal.SIGTERM)
        assert c.wait_for_death_sync(DEATH_BOUND_S)
        assert c.exit_code == 0
        with pytest.raises(EngineDeadError, match="exit code 0"):
            c.get_output()
    finally:
        c.shutdown()


def test_shutdown_is_clean():
    c = SyncMPClient(CoreProcessConfig(FAKE))
    sock_dir = c._tmpdir
    assert os.stat(sock_dir).st_mode & 0o777 == 0o700
    c.add_request(make_request("pending", max_tokens=10 ** 9))  # still running at shutdown
    c.shutdown()
    assert c.exit_code == 0 and not c.errored
    assert not os.path.exists(sock_dir)
    assert wait_pid_gone(c.core_pid, 0)
    with pytest.raises(EngineDeadError, match="shut down"):
        c.get_output()
    c.shutdown()  # idempotent


_PARENT = textwrap.dedent("""
    import sys
    sys.path[:0] = {path!r}
    from llmcore.engine.core_client import CoreProcessConfig, SyncMPClient
    c = SyncMPClient(CoreProcessConfig("fake_core:FakeEngineCore"))
    print(c.core_pid, c._tmpdir, flush=True)
    sys.stdin.read()  # until killed
""")


def test_front_end_death_ends_the_core():
    parent = subprocess.Popen([sys.executable, "-c", _PARENT.format(path=sys.path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        pid, sock_dir = parent.stdout.readline().split()
        core_pid = int(pid)
        assert not wait_pid_gone(core_pid, 0) and os.path.isdir(sock_dir)
        parent.kill()
        parent.wait()
        assert wait_pid_gone(core_pid, DEATH_BOUND_S)
        assert not os.path.exists(sock_dir)  # the orphaned core removed the socket dir
    finally:
        parent.kill()
        parent.wait()
