"""A sink switched off for maintenance: a running gateway's retention keeps the readings it has
not confirmed, also when it is the only sink, until the config explicitly releases it."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pytest

from gateway.buffer.store import BufferStore
from gateway.config import parse_config
from gateway.model import DECODED_QUARANTINE_SCHEMA, DECODED_READINGS_SCHEMA, IngestBatch
from gateway.services.mosquitto import Mosquitto
from gateway.testing import GatewayThread, wait_until


def old_readings(n: int) -> IngestBatch:
    at = int((time.time() - 10 * 86400) * 1e6)  # well past max_age
    micros = pa.array([at] * n, pa.int64()).view(pa.timestamp("us", tz="UTC"))
    table = pa.table(
        {
            "event_time": micros,
            "ingest_time": micros,
            "device": ["d"] * n,
            "metric": ["m"] * n,
            "value": [float(i) for i in range(n)],
            "text": pa.nulls(n, pa.string()),
            "unit": pa.nulls(n, pa.string()),
            "topic": ["sensors/h/d/m"] * n,
            "tags": pa.nulls(n, pa.string()),
        },
        schema=DECODED_READINGS_SCHEMA,
    )
    return IngestBatch(table, DECODED_QUARANTINE_SCHEMA.empty_table())


@pytest.mark.parametrize("released", [False, True])
def test_a_running_gateway_keeps_a_disabled_sinks_unsent_readings_unless_released(
    broker: Mosquitto, tmp_path: Path, released: bool
) -> None:
    buffer = tmp_path / "buffer.duckdb"
    store = BufferStore(buffer)
    store.append(old_readings(1000), [])
    store.write(lambda con: store.set_cursor("archive", 300))  # where it was switched off
    store.close()
    config = parse_config(
        {
            "mqtt": {"host": broker.host, "port": broker.port, "client_id": "gw-disabled-sink"},
            "buffer": {
                "path": str(buffer),
                "retention": {
                    "max_age": "1d",
                    "check_interval": "100ms",
                    "release_disabled_sinks": ["archive"] if released else [],
                },
            },
            "api": {"enabled": False},
            "sinks": [
                {
                    "type": "kafka",
                    "name": "archive",
                    "enabled": False,
                    "bootstrap_servers": "127.0.0.1:9",
                }
            ],
        }
    )
    with GatewayThread(config) as gw:
        running = gw.gateway.store
        assert running is not None

        def purged() -> int:
            return running.counters()["purged_readings_total"]

        assert wait_until(lambda: purged() > 0, timeout=10), "retention never purged"
        time.sleep(0.5)  # several more checks
        left = running.query("SELECT coalesce(min(id), 0) AS lo, count(*) AS n FROM readings")
        counters = running.counters()
    if released:
        assert left.to_pylist() == [{"lo": 0, "n": 0}]
        assert counters["purged_released_total"] == 700
    else:
        assert left.to_pylist() == [{"lo": 301, "n": 700}]
        assert counters["purged_readings_total"] == 300
        assert counters["purged_released_total"] == 0
