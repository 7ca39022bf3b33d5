"""What the benchmark scripts share to report a run: a fixed-width table on stdout, and a
JSON file with the device, commit and command line beside the figures, so that a number
in RESULTS.md can be traced back to the run that made it."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time


def describe_device(dev: str) -> str:
    """The GPU's name, or the CPU's kind and core count."""
    if dev == "cuda":
        import torch  # only where a model ran, so torch is loaded already

        return torch.cuda.get_device_name()
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}"


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except Exception:
        return "unknown"


def print_table(columns: list, rows: list) -> None:
    """columns: (header, format spec) pairs, e.g. ("engine", "<18"), ("avg s", ">9.3f"); the
    header is aligned and padded as its column, without the spec's precision or type."""
    widths = [re.match(r"[<>^]?\d*", spec).group(0) for _, spec in columns]
    print("".join(f"{header:{w}}" for (header, _), w in zip(columns, widths)))
    for row in rows:
        print("".join(f"{value:{spec}}" for value, (_, spec) in zip(row, columns)))


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
    print(f"wrote {path}")


def write_record(path: str, benchmark: str, device: str, args, results) -> dict:
    """One run's JSON: the figures with what they were measured on and how."""
    record = dict(benchmark=benchmark, date=time.strftime("%Y-%m-%d %H:%M:%S"),
                  commit=git_commit(), device=device, args=vars(args), results=results,
                  command=" ".join([os.path.basename(sys.executable)] + sys.argv))
    write_json(path, record)
    return record
