"""Opening the buffer's DuckDB file: file access locked off, clear errors, and the small
statements every part of the buffer shares (one number, counters, the size in use)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import duckdb

from gateway.errors import BufferStoreError

# The gateway's own database never touches other files: users' SQL goes through it, so reading
# files, ATTACH, COPY and extension downloads stay off for good (locked).
SAFE_DUCKDB_CONFIG: dict[str, Any] = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    # DuckDB starts 8 threads for asynchronous I/O per database by default, more than a small
    # box's cores; the buffer is one local file.
    "async_threads": 2,
    "lock_configuration": True,
}


def connect(path: Path, *, read_only: bool, lock_wait: float = 0.0) -> duckdb.DuckDBPyConnection:
    """Open the buffer file with file access locked off; a clear error when it cannot be opened.

    `lock_wait` seconds are spent retrying while another process holds the file (a CLI query
    on a stopped gateway's buffer holds it for a moment).
    """
    deadline = time.monotonic() + lock_wait
    while True:
        try:
            return _connect_once(path, read_only)
        except _LockedError:
            if time.monotonic() >= deadline:
                raise BufferStoreError(
                    f"buffer {path}: held by another process (a running gateway?); "
                    f"query it through that gateway's API instead"
                ) from None
            time.sleep(0.1)


class _LockedError(Exception):
    pass


def _connect_once(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(str(path), read_only=read_only, config=dict(SAFE_DUCKDB_CONFIG))
    except duckdb.IOException as exc:
        text = str(exc)
        if "lock" in text.lower():
            raise _LockedError from None
        hint = ""
        if "not a valid DuckDB database" in text or "checksum" in text.lower():
            hint = f"; the file is damaged: run `edge-gateway buffer recover -b {path}`"
        raise BufferStoreError(f"buffer {path}: cannot open: {text}{hint}") from None
    except duckdb.Error as exc:
        raise BufferStoreError(
            f"buffer {path}: cannot open ({exc}); if the file is damaged, run "
            f"`edge-gateway buffer recover -b {path}` (see 'Damaged buffer' in docs/operations.md)"
        ) from None


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> int:
    """The one number a statement answers (a count; DELETE answers how many it deleted)."""
    row = con.execute(sql, params).fetchone()
    return int(row[0]) if row else 0


def add_counters(con: duckdb.DuckDBPyConnection, **increments: int) -> None:
    """Add to the lifetime totals in `counters` (inside the caller's transaction)."""
    changed = [(name, amount) for name, amount in increments.items() if amount]
    if not changed:
        return
    cases = " ".join("WHEN ? THEN ?" for _ in changed)
    names = ", ".join("?" for _ in changed)
    params: list[Any] = [x for pair in changed for x in pair] + [name for name, _ in changed]
    con.execute(
        f"UPDATE counters SET value = value + CASE name {cases} END WHERE name IN ({names})",
        params,
    )


def used_bytes(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    """Blocks in use plus the WAL: until a checkpoint, new readings live only in the WAL."""
    result = con.execute("SELECT used_blocks * block_size FROM pragma_database_size()").fetchone()
    try:
        wal = path.with_name(path.name + ".wal").stat().st_size
    except FileNotFoundError:
        wal = 0
    return (int(result[0]) if result else 0) + wal
