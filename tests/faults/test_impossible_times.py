"""Impossible device times are quarantined with the reason, never stored as readings: `{"ts":
1e20}` became the year 290309 BC, `3e17` and "9999-12-31T23:59:59-12:00" a year past 9999 that
DuckDB accepts but no sink can encode (an Avro sink retried such a row forever, and dead-lettering
it crashed the gateway at every start). The readings around them arrive as usual."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from faulthelpers import gateway_ready, unique, write_config

from gateway.services.mosquitto import Mosquitto
from gateway.sqlclient import query
from gateway.testing import GatewayProcess, publisher, wait_until

IMPOSSIBLE = [1e20, 3e17, "9999-12-31T23:59:59-12:00", 1e300, "0001-01-01T00:00:00+14:00"]


def test_impossible_device_times_are_quarantined_and_the_rest_is_stored(
    broker: Mosquitto, tmp_path: Path, start_gateway: Callable[[Path], GatewayProcess]
) -> None:
    config = write_config(tmp_path, broker, "gw-times")
    buffer = tmp_path / "buffer.duckdb"
    gateway = start_gateway(config)
    assert wait_until(lambda: gateway_ready(buffer), timeout=30), gateway.tail()
    pub = publisher(broker.host, broker.port, client_id=unique("times"))
    payloads: list[dict[str, object]] = [{"ts": 1_780_000_000 + i, "value": i} for i in range(10)]
    payloads[3:3] = [{"ts": ts, "value": 99} for ts in IMPOSSIBLE]
    infos = [pub.publish("sensors/plant/dev1/temp", json.dumps(p), qos=1) for p in payloads]
    assert wait_until(lambda: all(m.is_published() for m in infos))
    pub.disconnect()
    pub.loop_stop()

    def stored() -> tuple[list[float], list[str]]:
        values = query(buffer, "SELECT value FROM readings ORDER BY id").column("value")
        reasons = query(buffer, "SELECT reason FROM quarantine ORDER BY id").column("reason")
        return values.to_pylist(), reasons.to_pylist()

    assert wait_until(lambda: len(stored()[0]) == 10 and len(stored()[1]) == 5), stored()
    values, reasons = stored()
    assert values == [float(i) for i in range(10)]
    assert all("outside 1970-01-01 to 2099-12-31 UTC" in r for r in reasons), reasons
    years = query(
        buffer, "SELECT min(year(event_time)) AS lo, max(year(event_time)) AS hi FROM readings"
    )
    assert (years.column("lo")[0].as_py(), years.column("hi")[0].as_py()) == (2026, 2026)
    assert gateway.alive()
    assert gateway.terminate() == 0
