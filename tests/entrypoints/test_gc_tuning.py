"""The server's GC settings (in a child process: they are process-wide)."""

from __future__ import annotations

import subprocess
import sys

CHILD = r"""
import gc
from llmcore.entrypoints.gc_tuning import SERVING_GEN0_THRESHOLD, tune_gc_for_serving
long_lived = [[i] for i in range(50_000)]   # stands in for the model's objects
_, g1, g2 = gc.get_threshold()
tune_gc_for_serving()
assert gc.get_threshold() == (SERVING_GEN0_THRESHOLD, g1, g2), gc.get_threshold()
assert gc.get_freeze_count() >= 50_000, gc.get_freeze_count()
assert not any(o is long_lived for o in gc.get_objects())   # frozen: no collection walks it
class Cycle:
    pass
c = Cycle(); c.self = c; del c                              # cyclic garbage is still collected
assert gc.collect() >= 1
print("ok")
"""


def test_freeze_and_threshold():
    r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
