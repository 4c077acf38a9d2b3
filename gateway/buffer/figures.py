"""Read-only figures from the buffer's tables, for the API, `/metrics` and `edge-gateway status`.

Each function takes a connection to read on (`BufferStore.reading()` while the gateway runs, a
read-only `connect` when it does not) and returns plain Python values: the SQL on the buffer's
tables stays in gateway/buffer/.
"""

from __future__ import annotations

from typing import Any

import duckdb


def _dicts(cursor: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description or []]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def latest_per_device(con: duckdb.DuckDBPyConnection, rows: int) -> list[tuple[Any, ...]]:
    """Per device and metric among the last `rows` readings: latest value, text and unit, the
    time of the latest (epoch seconds) and the count."""
    return con.execute(
        "SELECT device, metric, arg_max(value, id), arg_max(text, id), "
        "arg_max(unit, id), epoch_us(max(ingest_time)) / 1e6, count(*) FROM readings "
        "WHERE id > (SELECT coalesce(max(id), 0) FROM readings) - ? GROUP BY ALL",
        [rows],
    ).fetchall()


def active_alerts(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Alerts raised and not cleared since, newest first."""
    return _dicts(
        con.execute(
            "SELECT rule_id, device, metric, arg_max(severity, id) AS severity, "
            "arg_max(message, id) AS message, arg_max(value, id) AS value, "
            "epoch_us(max(alert_time)) / 1e6 AS since, arg_max(state, id) AS state "
            "FROM alerts GROUP BY rule_id, device, metric "
            "HAVING arg_max(state, id) = 'raised' ORDER BY since DESC"
        )
    )


def recent_alerts(con: duckdb.DuckDBPyConnection, limit: int) -> list[dict[str, Any]]:
    return _dicts(
        con.execute(
            "SELECT id, epoch_us(alert_time) / 1e6 AS time, rule_id, device, metric, "
            "severity, state, message, value FROM alerts ORDER BY id DESC LIMIT ?",
            [limit],
        )
    )


def recent_quarantine(con: duckdb.DuckDBPyConnection, limit: int) -> list[dict[str, Any]]:
    """The latest quarantined messages, with their raw payloads (bytes)."""
    return _dicts(
        con.execute(
            "SELECT id, epoch_us(received_at) / 1e6 AS received_at, topic, reason, "
            "payload_bytes, payload FROM quarantine ORDER BY id DESC LIMIT ?",
            [limit],
        )
    )


def quarantine_reasons(con: duckdb.DuckDBPyConnection, limit: int = 20) -> list[dict[str, Any]]:
    return _dicts(
        con.execute(
            "SELECT reason, count(*) AS messages, epoch_us(max(received_at)) / 1e6 AS last "
            "FROM quarantine GROUP BY reason ORDER BY messages DESC LIMIT ?",
            [limit],
        )
    )


def table_rows(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Rows in the tables people ask about."""
    rows = con.execute(
        "SELECT 'readings', count(*) FROM readings UNION ALL "
        "SELECT 'quarantine', count(*) FROM quarantine UNION ALL "
        "SELECT 'alerts', count(*) FROM alerts UNION ALL "
        "SELECT 'dead_letters', count(*) FROM dead_letters"
    ).fetchall()
    return {str(table): int(count) for table, count in rows}


def counters(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """The lifetime totals the buffer keeps across restarts, by name."""
    rows = con.execute("SELECT name, value FROM counters ORDER BY name").fetchall()
    return {str(name): int(value) for name, value in rows}


def last_reading_time(con: duckdb.DuckDBPyConnection) -> str | None:
    row = con.execute("SELECT max(ingest_time) FROM readings").fetchone()
    return str(row[0]) if row and row[0] is not None else None


def memory_by_tag(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Memory DuckDB holds (block cache, working memory), by tag, lower-cased."""
    rows = con.execute(
        "SELECT tag, memory_usage_bytes FROM duckdb_memory() "
        "WHERE memory_usage_bytes > 0 ORDER BY tag"
    ).fetchall()
    return {str(tag).lower(): int(used) for tag, used in rows}


def registry(con: duckdb.DuckDBPyConnection, limit: int) -> list[dict[str, Any]]:
    """The device registry, devices offline first, then the most recently seen; times in epoch
    seconds. A buffer file from before the registry has none."""
    if not con.execute("SELECT 1 FROM duckdb_tables() WHERE table_name = 'devices'").fetchall():
        return []
    return _dicts(
        con.execute(
            "SELECT device, availability, epoch_us(availability_since) / 1e6 AS "
            "availability_since, availability_changes, epoch_us(first_seen) / 1e6 AS first_seen, "
            "epoch_us(last_seen) / 1e6 AS last_seen, messages, readings, quarantined, model, "
            "vendor, routes FROM devices "
            "ORDER BY availability = 'offline' DESC NULLS LAST, last_seen DESC, device LIMIT ?",
            [limit],
        )
    )
