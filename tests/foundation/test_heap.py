"""Memory a thread frees goes back to the system, even after a large block raised glibc's
thresholds: the creep the soak found (docs/benchmarks.md, "Memory")."""

from __future__ import annotations

import subprocess
import sys

import pytest

# In a fresh process (malloc's settings are per process): one thread frees a large block (as a
# catch-up batch does), then allocates 40 blocks of 256 KiB, touches them, frees them and prints
# how many MiB more its RSS holds than before them.
PROBE = """
import ctypes, sys, threading
from pathlib import Path
from gateway.heap import return_freed_memory

def rss_kb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

if sys.argv[1] == "fixed":
    assert return_freed_memory()
libc = ctypes.CDLL(None)
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


def held_after_free(mode: str) -> float:
    run = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    return float(run.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_memory_goes_back_to_the_system_after_a_large_block() -> None:
    assert held_after_free("default") >= 9.0  # glibc alone keeps the 10 MiB the thread freed
    assert held_after_free("fixed") <= 1.0
