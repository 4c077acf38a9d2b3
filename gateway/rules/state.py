"""Saves the engine's state and its alerts in the buffer (on the buffer's writer thread)."""

from __future__ import annotations

from typing import Any, Protocol

import pyarrow as pa

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

    def get_state(self, owner: str) -> dict[str, Any]: ...

    def put_state(self, owner: str, items: dict[str, Any]) -> None: ...

    def append_alerts(self, alerts: pa.Table) -> int: ...


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
    snapshot = store.get_state(STATE_OWNER).get(STATE_KEY)
    return snapshot if isinstance(snapshot, dict) else None


def save(store: StateStore, snapshot: dict[str, Any] | None, alerts: list[AlertChange]) -> None:
    """Append alert changes, then replace the saved engine state."""
    if alerts:
        store.append_alerts(alerts_table(alerts))
    if snapshot is not None:
        store.put_state(STATE_OWNER, {STATE_KEY: snapshot})
