"""Saves the engine's state and its alerts in the buffer (on the buffer's writer thread)."""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

import duckdb
import orjson
import pyarrow as pa

from gateway.buffer import history
from gateway.buffer.history import AlertKey
from gateway.model import UTC_MICROS
from gateway.rules.actions import AlertChange

STATE_OWNER = "rules"
STATE_KEY = "engine"

# The alerts table's columns except `id` and `event_id`, which the store assigns.
ALERT_ROWS_SCHEMA = pa.schema(
    [
        pa.field("alert_time", UTC_MICROS, nullable=False),
        pa.field("rule_id", pa.string(), nullable=False),
        pa.field("device", pa.string(), nullable=False),
        pa.field("metric", pa.string()),
        pa.field("severity", pa.string(), nullable=False),
        pa.field("state", pa.string(), nullable=False),
        pa.field("message", pa.string()),
        pa.field("value", pa.float64()),
        pa.field("reading_event_id", pa.string()),
    ]
)


class StateStore(Protocol):
    """What the rules need from the buffer (BufferStore provides it)."""

    @property
    def next_reading_id(self) -> int: ...

    def get_state(self, owner: str) -> dict[str, Any]: ...

    def put_state(self, owner: str, items: dict[str, Any]) -> None: ...

    def append_alerts(self, alerts: pa.Table) -> int: ...

    def reading(self) -> contextlib.AbstractContextManager[duckdb.DuckDBPyConnection]: ...


def alerts_table(changes: list[AlertChange]) -> pa.Table:
    micros = pa.array([round(c.time * 1e6) for c in changes], pa.int64())
    return pa.Table.from_arrays(
        [
            micros.view(UTC_MICROS),
            pa.array([c.rule_id for c in changes], pa.string()),
            pa.array([c.device for c in changes], pa.string()),
            pa.array([c.metric for c in changes], pa.string()),
            pa.array([c.severity for c in changes], pa.string()),
            pa.array([c.state for c in changes], pa.string()),
            pa.array([c.message for c in changes], pa.string()),
            pa.array([c.value for c in changes], pa.float64()),
            pa.array([c.reading_event_id for c in changes], pa.string()),
        ],
        schema=ALERT_ROWS_SCHEMA,
    )


def load_snapshot(store: StateStore) -> dict[str, Any] | None:
    saved = store.get_state(STATE_OWNER).get(STATE_KEY)
    if isinstance(saved, str):  # stored pre-serialised (orjson is several times faster)
        saved = orjson.loads(saved)
    return saved if isinstance(saved, dict) else None


def save_snapshot(store: StateStore, snapshot: dict[str, Any]) -> None:
    store.put_state(STATE_OWNER, {STATE_KEY: orjson.dumps(snapshot).decode()})


def save_alerts(store: StateStore, alerts: list[AlertChange]) -> int:
    """Append alert changes; returns the id of the last one written."""
    first = store.append_alerts(alerts_table(alerts))
    return first + len(alerts) - 1


def last_alert_id(store: StateStore) -> int:
    with store.reading() as con:
        return history.last_alert_id(con)


def alert_key(change: AlertChange) -> AlertKey:
    return (change.rule_id, change.device, change.metric, change.state, round(change.time * 1e6))


def alerts_after(store: StateStore, after_id: int) -> set[AlertKey]:
    """Alert changes written after a snapshot was taken (a restart must not write them again)."""
    with store.reading() as con:
        return history.alert_keys_after(con, after_id)


def readings_after(store: StateStore, after_id: int, limit: int) -> pa.Table:
    """Committed readings with id > after_id, in commit order (what a restart replays), with
    their `retained` flag."""
    with store.reading() as con:
        return history.readings_after(con, after_id, limit)
