"""Memory a thread frees goes back to the system, even after a large block raised glibc's
thresholds (the creep the soak found), and so do the buffers of an Arrow table a thread built
and dropped (docs/benchmarks.md, "Memory")."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gateway.heap import ARROW_POOL

# Each probe runs in a fresh process (malloc's settings and Arrow's pool are per process), with
# `fixed` or `default` as its argument, and prints how many MiB its RSS still holds.
PROBE_SETUP = """
def rss_kb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

if sys.argv[1] == "fixed":
    assert return_freed_memory()
"""


def run_probe(probe: str, *args: str, pool: str | None = None) -> str:
    """The probe's output, run with Arrow's pool left to pyarrow or set to `pool`."""
    env = {k: v for k, v in os.environ.items() if k != ARROW_POOL}
    if pool is not None:
        env[ARROW_POOL] = pool
    run = subprocess.run(
        [sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=60, env=env
    )
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


# One thread frees a large block (as a catch-up batch does), then allocates 40 blocks of 256 KiB,
# touches them, frees them and prints how many MiB more its RSS holds than before them.
PROBE = (
    """
import ctypes, sys, threading
from pathlib import Path
from gateway.heap import return_freed_memory

"""
    + PROBE_SETUP
    + """libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
held = []

def work():
    big = libc.malloc(8 << 20)
    ctypes.memset(big, 1, 8 << 20)
    libc.free(big)
    before = rss_kb()  # (measuring allocates: above the blocks, it would pin them)
    blocks = [libc.malloc(256 << 10) for _ in range(40)]
    for block in blocks:
        ctypes.memset(block, 1, 256 << 10)
    for block in reversed(blocks):
        libc.free(block)
    held.append((rss_kb() - before) / 1024)

thread = threading.Thread(target=work)
thread.start()
thread.join()
print(round(held[0], 1))
"""
)


def held_after_free(mode: str) -> float:
    return float(run_probe(PROBE, mode))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_memory_goes_back_to_the_system_after_a_large_block() -> None:
    assert held_after_free("default") >= 9.0  # glibc alone keeps the 10 MiB the thread freed
    assert held_after_free("fixed") <= 1.0


# A thread builds a 2-million-row table (a catch-up batch is a few of these)
# and drops it; prints the MiB its RSS still holds.
ARROW_PROBE = (
    """
import sys, threading
from pathlib import Path
import pyarrow as pa
from gateway.heap import return_freed_memory

"""
    + PROBE_SETUP
    + """numbers = list(range(2_000_000))
texts = [str(i) for i in numbers]
before = rss_kb()

def work():
    table = pa.table({"n": numbers, "text": texts})
    assert table.nbytes > 40 << 20
    del table

thread = threading.Thread(target=work)
thread.start()
thread.join()
print(round((rss_kb() - before) / 1024, 1))
"""
)


def arrow_held_after_free(mode: str, pool: str | None = None) -> float:
    return float(run_probe(ARROW_PROBE, mode, pool=pool))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_an_arrow_table_a_thread_dropped_goes_back_to_the_system() -> None:
    assert arrow_held_after_free("default") >= 30.0  # Arrow's bundled allocator keeps it
    assert arrow_held_after_free("fixed") <= 10.0  # a gateway inside another program
    assert arrow_held_after_free("default", pool="system") <= 10.0  # the command line's choice


def test_importing_the_gateway_chooses_malloc_for_arrow() -> None:
    probe = "import gateway.app, pyarrow as pa; print(pa.default_memory_pool().backend_name)"
    assert run_probe(probe) == "system"
    assert run_probe(probe, pool="mimalloc") == "mimalloc"  # the user's own choice stays
