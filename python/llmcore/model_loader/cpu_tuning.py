"""Process-level tuning for CPU inference.

glibc serves allocations above M_MMAP_THRESHOLD (<= 32 MiB by default) with fresh mmaps
and gives freed heap tops back to the kernel, so every large activation (a 8192x3072
fp32 MLP output is 100 MB) is page-faulted in again at each layer: ~20% of a prefill's
time on this CPU. Raising the mmap and trim thresholds keeps freed blocks in the heap for
reuse (the effect of running under jemalloc/tcmalloc, as vLLM's CPU backend advises).
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


def tune_cpu_allocator(threshold_bytes: int = 1 << 30) -> bool:
    """Raise glibc's mmap/trim thresholds once per process. Returns True when applied."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, threshold_bytes) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, threshold_bytes) == 1 and ok
    _done = ok
    return ok
