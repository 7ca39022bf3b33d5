"""Does a host call block while the device waits on a host flag (the guided-mask channel)?

The GPU runner queues a guided step's sampling behind a kernel that waits for the host's
mask (model_runner/grammar_mask.py). A host call that waits for the device in between would
deadlock until the wait times out. torch's sync-debug mode catches torch's own syncs; this
probe checks the calls it cannot see — a fresh page-locked allocation (cudaHostAlloc, which
the CUDA guide lists among the implicit synchronizations) and a fresh device allocation —
while the device is held. A watchdog thread publishes the flag after --watchdog-s if the
main thread has not, so a blocking call shows as "blocked" instead of a hang.

    python benchmarks/guided_mask_sync_probe.py --output-json probe.json
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import torch


def probe(name: str, fn, watchdog_s: float) -> dict:
    from llmcore import ops
    flag = torch.zeros(1, dtype=torch.int32, pin_memory=True)
    dev_ptr = ops.host_device_pointer(flag)
    timed_out = torch.zeros(1, dtype=torch.int32, device="cuda")
    torch.cuda.synchronize()
    ops.wait_host_flag(dev_ptr, 1, torch.device("cuda"), 60_000, timed_out)
    done = torch.cuda.Event()
    done.record()
    rescued = threading.Event()

    def watchdog():
        if not finished.wait(watchdog_s):
            rescued.set()
            flag.numpy()[0] = 1

    finished = threading.Event()
    t = threading.Thread(target=watchdog, daemon=True)
    t.start()
    t0 = time.perf_counter()
    fn()
    call_ms = 1e3 * (time.perf_counter() - t0)
    still_held = not done.query()
    finished.set()
    flag.numpy()[0] = 1
    done.synchronize()
    t.join()
    return dict(call=name, call_ms=call_ms, device_still_waiting_after_call=still_held,
                blocked=rescued.is_set())


def channel_check(hold_s: float = 0.2) -> dict:
    """The runner's HostMaskChannel on the current stream: is the device still held after
    `hold_s`, and does the published mask reach the logits?"""
    import numpy as np
    from llmcore.model_runner.grammar_mask import HostMaskChannel
    dev = torch.device("cuda")
    ch = HostMaskChannel(dev, 4, rows=2)
    logits = torch.zeros(2, 128, device=dev)
    ticket = ch.launch(logits, None, 2)
    done = torch.cuda.Event()
    done.record()
    time.sleep(hold_s)
    held = not done.query()
    mask = np.zeros((2, 4), dtype=np.int32)
    mask[:, 0] = 1                                   # token 0 only
    ch.publish(ticket, mask)
    done.synchronize()
    ok = bool(torch.isfinite(logits[:, 0]).all() and torch.isinf(logits[:, 1:]).all())
    return dict(held_after_s=hold_s, device_held=held, mask_applied=ok,
                timed_out=int(ch.timed_out.item()))


def wait_variant(name: str, timeout_ms: int = 3000) -> dict:
    """One way of holding a stream for the host, tried three times in a row: WAIT/FLAG/STREAM
    with WAIT kernel (the polling kernel) or streamop (cuStreamWaitValue32), FLAG torchpin (a
    tensor from torch's pinned pool) or mapped (ops.MappedHostFlag), STREAM default or side.
    Per round: is the work behind the wait still held 50 ms after the launch, how long after
    the publish it ran, and whether the kernel reported a timeout. `channel/cold|warm/STREAM`
    runs HostMaskChannel, with its kernels never launched before (cold: CUDA's lazy loading
    may then block the launch of work behind a held stream) or launched once first (warm)."""
    from llmcore import ops
    dev = torch.device("cuda")
    kind, flag_kind, stream_kind = name.split("/")
    stream = torch.cuda.Stream() if stream_kind == "side" else torch.cuda.current_stream()
    res: dict = dict(variant=name)
    if kind == "channel":
        import numpy as np
        from llmcore.model_runner.grammar_mask import HostMaskChannel
        V = 1000
        with torch.cuda.stream(stream):
            ch = HostMaskChannel(dev, (V + 31) // 32, rows=4, timeout_ms=timeout_ms)
            if flag_kind == "warm":   # the kernels the channel queues, loaded before any hold
                ops.apply_token_bitmask(torch.zeros(2, V, device=dev, dtype=torch.float16),
                                        torch.full((2, (V + 31) // 32), -1, dtype=torch.int32,
                                                   device=dev), None)
                torch.cuda.synchronize()
            for r in range(3):
                logits = torch.randn(3, V, device=dev, dtype=torch.float16)
                t0 = time.perf_counter()
                ticket = ch.launch(logits, None, 3)
                launch_ms = 1e3 * (time.perf_counter() - t0)
                done = torch.cuda.Event()
                done.record()
                time.sleep(0.05)
                held = not done.query()
                mask = np.zeros((3, (V + 31) // 32), dtype=np.int32)
                mask[:, 0] = 1
                t1 = time.perf_counter()
                ch.publish(ticket, mask)
                done.synchronize()
                ok = bool(torch.isfinite(logits[:, 0]).all() and torch.isinf(logits[:, 1:]).all())
                res[f"round{r}"] = dict(launch_ms=round(launch_ms, 2), held=held,
                                        release_ms=round(1e3 * (time.perf_counter() - t1), 2),
                                        mask_applied=ok, timed_out=int(ch.timed_out.item()))
        return res
    if flag_kind == "torchpin":
        flag_t = torch.zeros(1, dtype=torch.int32, pin_memory=True)
        host, ptr = flag_t.numpy(), ops.host_device_pointer(flag_t)
    else:
        flag = ops.MappedHostFlag()
        host, ptr = flag.value, flag.device_ptr
    timed_out = torch.zeros(1, dtype=torch.int32, device=dev)
    out = torch.zeros(1, device=dev)
    out.add_(0.0)
    torch.cuda.synchronize()
    for target in (1, 2, 3):
        with torch.cuda.stream(stream):
            if kind == "kernel":
                ops.wait_host_flag(ptr, target, dev, timeout_ms, timed_out)
            elif not ops.stream_wait_value_geq(ptr, target, dev):
                res["supported"] = False
                return res
            out.add_(1.0)
            done = torch.cuda.Event()
            done.record()
        time.sleep(0.05)
        held = not done.query()
        t1 = time.perf_counter()
        host[0] = target
        done.synchronize()
        res[f"round{target}"] = dict(held=held, release_ms=round(1e3 * (time.perf_counter() - t1), 2),
                                     timed_out=int(timed_out.item()))
    res["out"] = out.item()
    return res


VARIANTS = ("kernel/torchpin/side", "kernel/torchpin/default", "kernel/mapped/default",
            "kernel/mapped/side", "streamop/mapped/default", "streamop/mapped/side",
            "channel/cold/default", "channel/warm/default", "channel/warm/side")


def run_variants() -> list:
    """Each variant in its own process (a hang or a wedged context stays there)."""
    import subprocess
    import sys
    rows = []
    for v in VARIANTS:
        try:
            r = subprocess.run([sys.executable, __file__, "--variant", v], capture_output=True,
                               text=True, timeout=25)
            line = (r.stdout.strip().splitlines() or [""])[-1]
            rows.append(json.loads(line) if line.startswith("{") else
                        dict(variant=v, error=(r.stderr.strip().splitlines() or ["?"])[-1]))
        except subprocess.TimeoutExpired:
            rows.append(dict(variant=v, error="hung past 25 s"))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--watchdog-s", type=float, default=3.0)
    p.add_argument("--output-json", default=None)
    p.add_argument("--variant", default=None, help="run one wait variant (see wait_variant)")
    p.add_argument("--variants", action="store_true", help="only the wait variants")
    a = p.parse_args()
    if a.variant:
        print(json.dumps(wait_variant(a.variant)), flush=True)
        return
    if a.variants:
        rows = run_variants()
        if a.output_json:
            with open(a.output_json, "w") as f:
                json.dump(dict(device=torch.cuda.get_device_name(), variants=rows), f, indent=1)
        return
    sizes = iter(range(1, 1000))
    calls = {
        "pinned alloc (new size)": lambda: torch.empty((3 << 20) + next(sizes) * 4096,
                                                       dtype=torch.uint8, pin_memory=True),
        "device alloc (new 256 MiB block)": lambda: torch.empty(256 << 20, dtype=torch.uint8,
                                                                device="cuda"),
        "pinned tensor + non_blocking H2D": lambda: torch.arange(1000).pin_memory().to(
            "cuda", non_blocking=True),
        "pageable non_blocking H2D": lambda: torch.arange(1000).to("cuda", non_blocking=True),
        "event record + query": lambda: torch.cuda.Event().record(),
    }
    rows = [probe(name, fn, a.watchdog_s) for name, fn in calls.items()]
    print(f"{'host call while the device waits for the host':45s} {'ms':>9s}  blocked")
    for r in rows:
        print(f"{r['call']:45s} {r['call_ms']:9.2f}  {r['blocked']}")
    channel = channel_check()
    print("mask channel:", channel)
    if a.output_json:
        with open(a.output_json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), probes=rows, channel=channel),
                      f, indent=1)


if __name__ == "__main__":
    main()
