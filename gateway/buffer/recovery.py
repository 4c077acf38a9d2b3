"""Checking a buffer file end to end, and rebuilding a damaged one from what can still be read.

`check` reads every block of every table (DuckDB verifies block checksums on read), so a torn
or overwritten file shows up as a named table and error instead of as a failure hours later.
`recover` copies whatever is readable into a fresh file, keeps the buffer's identity and its
positions (sinks name their uploads by position), moves the damaged file aside and reports
exactly what was lost.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from gateway.buffer.connection import connect
from gateway.buffer.schema import ADDED_LATER, COUNTERS
from gateway.buffer.store import BufferStore
from gateway.errors import BufferStoreError

logger = logging.getLogger(__name__)

TABLES = (
    "meta",
    "readings",
    "quarantine",
    "alerts",
    "sink_cursors",
    "state",
    "mqtt_inflight",
    "retained_readings",
    "content_identities",
    "counters",
    "dead_letters",
    "devices",
)
_POSITIONED = {
    "readings": "readings_total",
    "quarantine": "quarantined_total",
    "alerts": "alerts_total",
}
SALVAGE_CHUNK = 2048  # rows per id range when a table cannot be read whole


@dataclass
class CheckReport:
    path: Path
    rows: dict[str, int] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)  # table (or "file") -> error

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class RecoverReport:
    path: Path
    damaged_copy: Path | None
    salvaged: dict[str, int] = field(default_factory=dict)
    lost_ranges: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)  # tables that could not be read at all
    unsent_lost: int = 0  # lost readings the slowest sink had not confirmed yet
    positions_restart_at: int | None = None  # set when the old positions could not be read

    @property
    def lost(self) -> int:
        return sum(hi - lo + 1 for ranges in self.lost_ranges.values() for lo, hi in ranges)


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def check_buffer(path: Path) -> CheckReport:
    """Read every table of a (stopped) gateway's buffer in full; problems are named per table."""
    report = CheckReport(Path(path))
    if not report.path.exists():
        report.problems["file"] = "no such file"
        return report
    try:
        con = connect(report.path, read_only=True, lock_wait=2.0)
    except BufferStoreError as exc:
        report.problems["file"] = str(exc)
        return report
    try:
        not_yet = _not_yet_created(con)
        for table in TABLES:
            if table in not_yet:
                report.rows[table] = 0
                continue
            try:
                # Hashing every column forces every block to be read and its checksum checked.
                row = con.execute(f"SELECT count(*), sum(hash(COLUMNS(*))) FROM {table}").fetchone()
                report.rows[table] = int(row[0]) if row else 0
            except duckdb.Error as exc:
                report.problems[table] = _short(exc)
    finally:
        con.close()
    return report


def _not_yet_created(con: duckdb.DuckDBPyConnection) -> frozenset[str]:
    """Tables a file written before they existed lacks: not damage, the next start adds them."""
    try:
        present = {
            str(name)
            for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        }
    except duckdb.Error:
        return frozenset()
    return ADDED_LATER - present


def _fetch(
    con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, int] | None = None
) -> pa.Table:
    # A read that failed half-way leaves its connection busy; each read gets its own cursor.
    cursor = con.cursor()
    try:
        return cursor.sql(sql, params=params).to_arrow_table()
    finally:
        cursor.close()


def _read_table(con: duckdb.DuckDBPyConnection, table: str) -> pa.Table:
    return _fetch(con, f"SELECT * FROM {table}")


def _salvage_by_id(
    con: duckdb.DuckDBPyConnection, table: str, high: int
) -> tuple[list[pa.Table], list[tuple[int, int]]]:
    """Read a positioned table range by range; ranges that fail are reported lost."""
    parts: list[pa.Table] = []
    lost: list[tuple[int, int]] = []
    for low in range(1, high + 1, SALVAGE_CHUNK):
        upto = min(low + SALVAGE_CHUNK - 1, high)
        try:
            part = _fetch(
                con,
                f"SELECT * FROM {table} WHERE id BETWEEN $low AND $upto ORDER BY id",
                {"low": low, "upto": upto},
            )
            parts.append(part)
        except duckdb.Error:
            lost.append((low, upto))
    return parts, lost


def _merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> int | None:
    try:
        column = _fetch(con, sql).column(0)
    except duckdb.Error:
        return None
    value = column[0].as_py() if len(column) else None
    return int(value) if value is not None else None


def recover_buffer(path: Path, now: float | None = None) -> RecoverReport:
    """Rebuild `path` from what can be read; the damaged file is kept next to it."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))
    damaged = path.with_name(f"{path.name}.damaged-{stamp}")
    fresh = path.with_name(f"{path.name}.recovering")
    for leftover in (fresh, fresh.with_name(fresh.name + ".wal")):
        leftover.unlink(missing_ok=True)
    report = RecoverReport(path, damaged if path.exists() else None)
    tables: dict[str, pa.Table] = {}
    highs: dict[str, int] = {}
    old: duckdb.DuckDBPyConnection | None = None
    if path.exists():
        try:
            old = connect(path, read_only=True, lock_wait=2.0)
        except BufferStoreError as exc:
            if "held by another process" in str(exc):
                raise
            logger.warning("%s", exc)
            report.unreadable.append("file")
    if old is not None:
        try:
            totals: dict[str, int] = {}
            try:
                counters = _fetch(old, "FROM counters").to_pylist()
                totals = {str(r["name"]): int(r["value"]) for r in counters}
            except duckdb.Error:
                report.unreadable.append("counters")
            not_yet = _not_yet_created(old)
            for table in TABLES:
                if table == "counters" or table in not_yet:
                    continue
                try:
                    tables[table] = _read_table(old, table)
                    continue
                except duckdb.Error:
                    pass
                if table not in _POSITIONED:
                    report.unreadable.append(table)
                    continue
                high = max(
                    _scalar(old, f"SELECT max(id) FROM {table}") or 0,
                    totals.get(_POSITIONED[table], 0),
                )
                parts, lost = _salvage_by_id(old, table, high)
                highs[table] = high
                if parts:
                    tables[table] = pa.concat_tables(parts)
                report.lost_ranges[table] = lost
            if totals:
                tables["counters"] = pa.table(
                    {"name": list(totals), "value": pa.array(list(totals.values()), pa.int64())}
                )
        finally:
            old.close()
    if "file" in report.unreadable or ("counters" in report.unreadable and not highs):
        # The old high-water marks are gone. Sinks name uploads by position, so new positions
        # must lie beyond any the old file can have handed out: microseconds since the epoch.
        moment = now if now is not None else time.time()
        report.positions_restart_at = int(moment * 1_000_000)
        highs = dict.fromkeys(_POSITIONED, report.positions_restart_at)
    _write_fresh(fresh, tables, highs, report)
    if path.exists():
        path.rename(damaged)
        wal = path.with_name(path.name + ".wal")
        if wal.exists():
            wal.rename(damaged.with_name(damaged.name + ".wal"))
    fresh.rename(path)
    for table, ranges in report.lost_ranges.items():
        report.lost_ranges[table] = _merge_ranges(ranges)
    return report


def _write_fresh(
    fresh: Path, tables: dict[str, pa.Table], highs: dict[str, int], report: RecoverReport
) -> None:
    store = BufferStore(fresh)
    store.close()
    con = connect(fresh, read_only=False)
    try:
        con.begin()
        for table, data in tables.items():
            if table in ("meta", "counters"):
                con.execute(f"DELETE FROM {table}")  # the old identity and totals win
            con.register("_salvaged", data)
            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _salvaged")
            con.unregister("_salvaged")
            report.salvaged[table] = data.num_rows
        con.execute(
            "INSERT OR IGNORE INTO counters SELECT unnest(?::VARCHAR[]), 0", [list(COUNTERS)]
        )
        # Positions must not go back past what was handed out before the damage.
        for table, counter in _POSITIONED.items():
            if table in highs:
                con.execute(
                    "UPDATE counters SET value = greatest(value, ?) WHERE name = ?",
                    [highs[table], counter],
                )
        cursors = con.execute(
            "SELECT coalesce(min(position), 0) FROM sink_cursors WHERE stream = 'readings'"
        ).fetchone()
        shipped = int(cursors[0]) if cursors else 0
        has_sinks = "sink_cursors" in tables and tables["sink_cursors"].num_rows > 0
        for lo, hi in report.lost_ranges.get("readings", []) if has_sinks else []:
            if hi > shipped:
                report.unsent_lost += hi - max(lo, shipped + 1) + 1
        con.commit()
        con.execute("CHECKPOINT")
    except duckdb.Error:
        with contextlib.suppress(duckdb.Error):
            con.rollback()
        raise
    finally:
        con.close()
