"""Allocator settings for batch work: keep freed memory for the next batch.

Every batch allocates and frees the same large buffers (the batch bytes, Polars columns,
the sealed and NDJSON outputs). By default both allocators hand big blocks back to the
kernel as soon as they are freed (glibc maps anything over a few MiB separately and
unmaps it on free; Polars' jemalloc purges dirty pages), so the next batch faults every
page in again. On the bench workload that was a fifth of the CPU time, in ``sys``. Here
freed memory is kept for reuse; the peak stays what one batch needs.

Settings the operator has already made (the same environment variables) win.
"""
from __future__ import annotations

import ctypes
import os

#: glibc: serve blocks up to 256 MiB from the heap, and keep up to 1 GiB of free heap.
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 1 << 30
#: Polars' jemalloc (tikv-jemallocator reads this name): purge freed pages after 5 s, not at once.
JEMALLOC_CONF = "dirty_decay_ms:5000,muzzy_decay_ms:5000"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def tune_for_batches() -> None:
    """Apply the settings to this process (glibc, via mallopt) and to processes it starts (environment).

    jemalloc reads its configuration when it first allocates, so this must run before
    Polars is imported to take effect in this process; child processes always get it.
    """
    os.environ.setdefault("_RJEM_MALLOC_CONF", JEMALLOC_CONF)
    user_set = "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD))
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(TRIM_THRESHOLD))
    if user_set:
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    except (OSError, AttributeError):  # not glibc (musl, macOS): the defaults stay
        pass
