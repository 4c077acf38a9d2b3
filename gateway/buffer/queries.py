"""Statements for the read-only SQL surface (gateway/buffer/sql.py) that the CLI's commands
send, through a running gateway's API or on the file: export, replay, backtest, the demo. They
are built here, beside the tables they read, with numbers only interpolated as numbers.
"""

from __future__ import annotations

from gateway.buffer.outbox import STREAMS

BUFFER_UID = "SELECT value FROM meta WHERE key = 'buffer_uid'"

# The demo's live view and the queries it suggests afterwards.
LATEST_BY_DEVICE = (
    "SELECT device, metric, count(*) AS readings, "
    # text states too (a light's ON/OFF, a door's open/closed)
    "coalesce(last(text ORDER BY id), "
    "CAST(round(last(value ORDER BY id), 2) AS VARCHAR)) AS latest "
    "FROM readings GROUP BY ALL ORDER BY device, metric"
)
RECENT_ALERTS = (
    "SELECT strftime(alert_time, '%H:%M:%S') AS at, rule_id, device, "
    "severity, state, message FROM alerts ORDER BY id DESC LIMIT 5"
)
EXAMPLES = (
    "SELECT device, metric, avg(value) FROM readings GROUP BY ALL",
    "SELECT * FROM quarantine",
)


def _since(column: str, cutoff: float) -> str:
    return f"{column} >= to_timestamp({float(cutoff)!r})"


def _time_column(stream: str) -> str:
    if stream not in STREAMS:  # a table name goes into the SQL text: only known ones
        raise ValueError(f"unknown stream {stream!r} (known: {', '.join(STREAMS)})")
    return "ingest_time" if stream == "readings" else "alert_time"


def count_received_since(cutoff: float) -> str:
    """Readings received (ingest time) since `cutoff` (epoch seconds): one row, column n."""
    return f"SELECT count(*) AS n FROM readings WHERE {_since('ingest_time', cutoff)}"


def count_events_since(cutoff: float) -> str:
    """Readings whose event time is since `cutoff`: one row, column n."""
    return f"SELECT count(*) AS n FROM readings WHERE {_since('event_time', cutoff)}"


def received_since_page(cutoff: float, after: int, page: int) -> str:
    """A page of readings received since `cutoff` with id > after, in id order (keyset paging:
    a page the API's row limit cut short still continues right)."""
    return (
        f"SELECT * FROM readings WHERE {_since('ingest_time', cutoff)} "
        f"AND id > {int(after)} ORDER BY id LIMIT {int(page)}"
    )


def _confirmed_since(stream: str, cutoff: float, upto: int) -> str:
    return f"{_since(_time_column(stream), cutoff)} AND id <= {int(upto)}"


def count_confirmed_since(stream: str, cutoff: float, upto: int) -> str:
    """Rows of `stream` since `cutoff` a sink confirmed (id <= upto): one row, column n."""
    return f"SELECT count(*) AS n FROM {stream} WHERE {_confirmed_since(stream, cutoff, upto)}"


def confirmed_since_page(stream: str, cutoff: float, upto: int, after: int, page: int) -> str:
    return (
        f"SELECT * FROM {stream} WHERE {_confirmed_since(stream, cutoff, upto)} "
        f"AND id > {int(after)} ORDER BY id LIMIT {int(page)}"
    )
