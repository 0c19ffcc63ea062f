"""Allocator settings for long CPU training runs.

glibc's malloc serves every block above its mmap threshold (32 MiB at most) with a fresh
``mmap`` and gives it back to the system on ``free``. A training step allocates and frees
the same large tensors over and over (FreqD's expert hidden layers on a CiteULike-t batch
neighbourhood are about 90 MB each, a 400-d MF gradient 48 MB), so every step page-faults
them in again. Measured side by side in separate processes (``benchmarks/bench_heap.py``,
docs/RESULTS.md, Speed): a FreqD step 1.56x faster with :func:`keep_freed_memory`, a
BPR-MF 400 step 2.18x, a LightGCN 2000 step 1.38x, an fd step 1.03x.

:func:`keep_freed_memory` turns that off for the process: large blocks come from the heap
and freed memory stays there for the next step. The numbers a run computes do not change;
the price is a peak RSS that includes the heap's free blocks (+7% to +30% in that
benchmark; the FreqD process 1.31 GB against 1.01 GB). It is a no-op off glibc (macOS, Windows, musl).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger("freqd")

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_applied: bool | None = None


def keep_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Serve large allocations from the heap (no per-block ``mmap``) and return free heap
    memory to the system only above ``trim_threshold`` bytes. Once per process; returns
    whether the settings are in effect (False where the C library is not glibc)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if not hasattr(libc, "gnu_get_libc_version"):
            return False
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1
    except (OSError, AttributeError):  # no usable libc
        return False
    _applied = bool(ok)
    if _applied:
        log.debug("malloc: large blocks from the heap, freed memory kept (trim above %d bytes)", trim_threshold)
    return _applied
