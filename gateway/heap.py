"""The C heap gives memory it no longer uses back to the system, instead of keeping it per thread.

glibc's malloc raises its trim threshold each time a large block is freed (up to 64 MiB), and it
never trims the free top of a thread's arena on `malloc_trim`. A gateway's threads each meet a
large batch now and then (the catch-up after an outage, a recycle of the buffer), so each of
its arenas keeps its own high-water mark, and the process's memory creeps up as threads move
between arenas. Fixed thresholds (which also turn the raising off) keep at most TRIM_THRESHOLD
free at the top of each arena and give every block above MMAP_THRESHOLD straight back when it
is freed. See docs/benchmarks.md, "Memory".
"""

from __future__ import annotations

import ctypes
import logging
import sys

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 256 * 1024
MMAP_THRESHOLD = 1024 * 1024  # DuckDB's 256 KiB blocks stay in the arenas, reused


def return_freed_memory() -> bool:
    """Fix glibc's malloc thresholds for this process; False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: their own malloc
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    )
    if not done:
        logger.warning("could not set malloc's trim and mmap thresholds; memory may creep")
    return done
