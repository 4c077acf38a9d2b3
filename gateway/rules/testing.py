"""Builds reading batches by hand, for unit tests of rules and for benchmarks: ten-line tests."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa

from gateway.model import READINGS_SCHEMA


@dataclass(slots=True, frozen=True)
class R:
    """One reading: `R(t, "freezer", "temperature", -18.0)`; text for states (`text="ON"`)."""

    time: float
    device: str
    metric: str
    value: float | None = None
    text: str | None = None
    topic: str | None = None  # default: sensors/home/<device>/<metric>
    tags: str | None = None
    arrival: float | None = None  # when the gateway received it; default: `time`


def readings(rows: Iterable[R], first_id: int = 1) -> pa.Table:
    """A committed batch (READINGS_SCHEMA) holding the given readings in the given order."""
    items = list(rows)
    n = len(items)
    micros = pa.array([round(r.time * 1e6) for r in items], pa.int64())
    stamps = micros.view(pa.timestamp("us", tz="UTC"))
    arrived = [round((r.time if r.arrival is None else r.arrival) * 1e6) for r in items]
    arrivals = pa.array(arrived, pa.int64()).view(pa.timestamp("us", tz="UTC"))
    ids = list(range(first_id, first_id + n))
    return pa.Table.from_arrays(
        [
            pa.array(ids, pa.int64()),
            pa.array([f"test-{i}" for i in ids], pa.string()),
            stamps,
            arrivals,
            pa.array([r.device for r in items], pa.string()),
            pa.array([r.metric for r in items], pa.string()),
            pa.array([r.value for r in items], pa.float64()),
            pa.array([r.text for r in items], pa.string()),
            pa.array([None] * n, pa.string()),
            pa.array(
                [r.topic or f"sensors/home/{r.device}/{r.metric}" for r in items], pa.string()
            ),
            pa.array([r.tags for r in items], pa.string()),
        ],
        schema=READINGS_SCHEMA,
    )
