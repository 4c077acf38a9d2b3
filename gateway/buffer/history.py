"""Buffered history for the rules: readings after a position (with the `retained` flag), as a
restart replays them and a backtest reads them, and the alert changes already written.

`history_sql` is text for the read-only SQL surface (a backtest may run through a running
gateway's API); the other functions take a reading connection (`BufferStore.reading()`).
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

# Readings with a `retained` flag: those decoded from retained messages prime the rules (known
# state, not news), in a backtest or a restart's replay just as when they arrived.
# A buffer file written before `retained_readings` existed (flagged=False) has none to flag.
RETAINED_FLAG = "r.id IN (SELECT id FROM retained_readings)"

# The query that tells whether a buffer has the table (one row, column n).
HAS_RETAINED_SQL = (
    "SELECT count(*) AS n FROM duckdb_tables() WHERE table_name = 'retained_readings'"
)


def history_sql(after: int, page: int, since: float | None = None, flagged: bool = True) -> str:
    """Readings with id > after (and event time >= since), in arrival order, flagged."""
    flag = RETAINED_FLAG if flagged else "false"
    period = f" AND r.event_time >= to_timestamp({float(since)!r})" if since is not None else ""
    return (
        f"SELECT r.*, {flag} AS retained FROM readings AS r "
        f"WHERE r.id > {int(after)}{period} ORDER BY r.id LIMIT {int(page)}"
    )


def readings_after(con: duckdb.DuckDBPyConnection, after_id: int, limit: int) -> pa.Table:
    """Committed readings with id > after_id, in commit order, with their `retained` flag."""
    return con.sql(history_sql(after_id, limit)).to_arrow_table()


def last_alert_id(con: duckdb.DuckDBPyConnection) -> int:
    row = con.execute("SELECT coalesce(max(id), 0) FROM alerts").fetchone()
    return int(row[0]) if row else 0


AlertKey = tuple[str, str, str, str, int]  # rule, device, metric, state, time in microseconds


def alert_keys_after(con: duckdb.DuckDBPyConnection, after_id: int) -> set[AlertKey]:
    """The alert changes written after `after_id`."""
    rows = con.execute(
        "SELECT rule_id, device, coalesce(metric, ''), state, epoch_us(alert_time) "
        "FROM alerts WHERE id > ?",
        [after_id],
    ).fetchall()
    return {(str(r), str(d), str(m), str(s), int(t)) for r, d, m, s, t in rows}
