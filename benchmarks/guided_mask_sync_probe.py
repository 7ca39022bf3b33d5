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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--watchdog-s", type=float, default=3.0)
    p.add_argument("--output-json", default=None)
    a = p.parse_args()
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
