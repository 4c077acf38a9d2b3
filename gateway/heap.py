"""The C heap gives memory it no longer uses back to the system, instead of keeping it per thread.

glibc's malloc raises its trim threshold each time a large block is freed (up to 64 MiB), and it
never trims the free top of a thread's arena on `malloc_trim`. A gateway's threads each meet a
large batch now and then (the catch-up after an outage, a recycle of the buffer), so each of
its arenas keeps its own high-water mark, and the process's memory creeps up as threads move
between arenas. Fixed thresholds (which also turn the raising off) keep at most TRIM_THRESHOLD
free at the top of each arena and give every block above MMAP_THRESHOLD straight back when it
is freed.

Arrow's buffers come from that same malloc, not from pyarrow's bundled allocator (mimalloc),
which keeps what a thread's batch freed (a 2-million-row table built and dropped on a thread:
about 65 MB held against 7 MB). Arrow picks its default pool once, when pyarrow is first
imported, from ARROW_DEFAULT_MEMORY_POOL: importing `gateway` sets it (`arrow_allocates_with_
malloc`), and a gateway started where pyarrow came first switches pyarrow's own default
(`return_freed_memory`). A user's own ARROW_DEFAULT_MEMORY_POOL wins.
See docs/benchmarks.md, "Memory".
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 256 * 1024
MMAP_THRESHOLD = 1024 * 1024  # DuckDB's 256 KiB blocks stay in the arenas, reused
ARROW_POOL = "ARROW_DEFAULT_MEMORY_POOL"


def arrow_allocates_with_malloc() -> None:
    """Arrow's default pool becomes malloc, unless the user chose one; call before pyarrow is
    imported (later, Arrow's C++ code keeps the pool it picked at import)."""
    os.environ.setdefault(ARROW_POOL, "system")


def return_freed_memory() -> bool:
    """Fix glibc's malloc thresholds for this process and let Arrow allocate through malloc;
    False where the C library is not glibc (Arrow's own allocator stays)."""
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
        return False
    if os.environ.get(ARROW_POOL, "system") == "system":
        import pyarrow as pa

        pa.set_memory_pool(pa.system_memory_pool())
    return True
