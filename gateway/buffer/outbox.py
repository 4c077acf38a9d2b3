"""What the sinks read and write in the buffer: rows after a cursor, each sink's cursor and its
recorded attempt, dead letters, and backlog figures.

Each function takes a connection: a reading one (`BufferStore.reading()`, or a read-only
`connect` when no gateway runs) for the reads, the writer's transaction (`BufferStore.write`)
for `record_attempt` and `confirm`, so that a cursor, the attempt it ends and its dead letters
change together or not at all. The SQL on the buffer's tables stays in gateway/buffer/.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb
import pyarrow as pa

STREAMS = ("readings", "alerts")  # the buffer's tables a sink can ship


def _stream(stream: str) -> str:
    if stream not in STREAMS:  # a table name goes into the SQL text: only known ones
        raise ValueError(f"unknown stream {stream!r} (known: {', '.join(STREAMS)})")
    return stream


def state_owner(sink: str, stream: str) -> str:
    return f"sink:{sink}:{stream}"


def head(con: duckdb.DuckDBPyConnection, stream: str) -> int:
    """The position of the stream's newest row (0 when empty)."""
    row = con.execute(f"SELECT coalesce(max(id), 0) FROM {_stream(stream)}").fetchone()
    return int(row[0]) if row else 0


def rows_after(
    con: duckdb.DuckDBPyConnection, stream: str, after: int, upto: int | None, limit: int
) -> pa.Table:
    """Rows of `stream` with `after < id <= upto`, oldest first, at most `limit`, as Arrow."""
    # Positions are dense (each commit numbers its rows on from the last), so the next `limit`
    # rows are nearly always `after + 1 .. after + limit`. Asking for that range lets DuckDB
    # skip the row groups past it, where `ORDER BY id LIMIT` alone ranks every row after
    # `after` (5x slower at the start of a million-row backlog). A short answer may mean a
    # gap (rows purged, a failed commit's numbers) or the end: then the open query decides.
    bound = after + limit if upto is None else min(upto, after + limit)
    table = _rows_between(con, stream, after, bound, limit)
    if table.num_rows == limit or bound == upto:
        return table
    return _rows_between(con, stream, after, upto, limit)


def _rows_between(
    con: duckdb.DuckDBPyConnection, stream: str, after: int, upto: int | None, limit: int
) -> pa.Table:
    sql = f"SELECT * FROM {_stream(stream)} WHERE id > ?"
    params: list[Any] = [after]
    if upto is not None:
        sql += " AND id <= ?"
        params.append(upto)
    sql += " ORDER BY id LIMIT ?"
    params.append(limit)
    return con.sql(sql, params=params).to_arrow_table()


def load_attempt(con: duckdb.DuckDBPyConnection, sink: str, stream: str) -> dict[str, Any] | None:
    """The attempt recorded before a send and not confirmed yet (JSON object), or None."""
    rows = con.execute(
        "SELECT value FROM state WHERE owner = ? AND key = 'attempt'", [state_owner(sink, stream)]
    ).fetchall()
    return dict(json.loads(rows[0][0])) if rows else None


def load_cursor(con: duckdb.DuckDBPyConnection, sink: str, stream: str) -> int:
    """The last position the sink confirmed (0: nothing yet)."""
    rows = con.execute(
        "SELECT position FROM sink_cursors WHERE sink = ? AND stream = ?", [sink, stream]
    ).fetchall()
    return int(rows[0][0]) if rows else 0


def cursors(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], int]:
    """Every (sink, stream) cursor, configured or not any more."""
    rows = con.execute("SELECT sink, stream, position FROM sink_cursors").fetchall()
    return {(str(s), str(t)): int(p) for s, t, p in rows}


def dead_letter_counts(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], int]:
    rows = con.execute("SELECT sink, stream, count(*) FROM dead_letters GROUP BY ALL").fetchall()
    return {(str(s), str(t)): int(n) for s, t, n in rows}


def backlog(
    con: duckdb.DuckDBPyConnection, stream: str, position: int, now: float
) -> dict[str, Any]:
    """Cursor, head, rows not yet confirmed and the age of the oldest of them."""
    time_column = "ingest_time" if stream == "readings" else "alert_time"
    row = con.execute(
        f"SELECT coalesce(max(id), 0), count(*) FILTER (WHERE id > ?), "
        f"epoch_us(min({time_column}) FILTER (WHERE id > ?)) FROM {_stream(stream)}",
        [position, position],
    ).fetchall()[0]
    newest, rows, oldest = int(row[0]), int(row[1]), row[2]
    return {
        "position": position,
        "head": newest,
        "backlog_rows": rows,
        "oldest_unsent_age_s": round(now - oldest / 1e6, 1) if oldest is not None else None,
    }


def set_cursor(con: duckdb.DuckDBPyConnection, sink: str, stream: str, position: int) -> None:
    con.execute(
        "INSERT OR REPLACE INTO sink_cursors VALUES (?, ?, ?, now())", [sink, stream, position]
    )


def record_attempt(
    con: duckdb.DuckDBPyConnection, sink: str, stream: str, attempt: dict[str, Any]
) -> None:
    """Record an attempt before its first send (in the writer's transaction)."""
    con.execute(
        "INSERT OR REPLACE INTO state VALUES (?, 'attempt', ?, now())",
        [state_owner(sink, stream), json.dumps(attempt)],
    )


def confirm(
    con: duckdb.DuckDBPyConnection,
    sink: str,
    stream: str,
    position: int,
    dead_letters: pa.Table | None = None,
) -> None:
    """The sink confirmed everything up to `position`: move its cursor there, end the recorded
    attempt and keep the rows it refused for good, in the writer's one transaction."""
    if dead_letters is not None and dead_letters.num_rows:
        con.register("_dead_letters", dead_letters)
        con.execute("INSERT INTO dead_letters BY NAME SELECT * FROM _dead_letters")
        con.unregister("_dead_letters")
    con.execute(
        "INSERT OR REPLACE INTO sink_cursors VALUES (?, ?, ?, now())", [sink, stream, position]
    )
    con.execute(
        "DELETE FROM state WHERE owner = ? AND key = 'attempt'", [state_owner(sink, stream)]
    )
