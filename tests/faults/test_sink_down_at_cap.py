"""A sink down for a long stretch under steady load while the buffer reaches its size cap: the
configured `retention.on_full` policy happens and is counted, and nothing else is lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from faulthelpers import (
    GatewayProcess,
    SteadyPublisher,
    buffer_counters,
    gateway_ready,
    kafka_values,
    lost_and_doubled,
    unique,
    write_config,
)

from gateway.services import free_port
from gateway.services.mosquitto import Mosquitto
from gateway.services.tansu import Tansu
from gateway.testing import wait_until

TOTAL = 24_000


@pytest.mark.parametrize("on_full", ["drop_oldest", "keep_unsent"])
def test_sink_down_while_the_buffer_hits_its_cap_applies_and_counts_the_on_full_policy(
    broker: Mosquitto, tmp_path: Path, on_full: str
) -> None:
    kafka_port = free_port()  # nothing listens here until the uplink "comes back"
    prefix = unique("cap")
    sinks: list[dict[str, Any]] = [
        {
            "type": "kafka",
            "name": "uplink",
            "bootstrap_servers": f"127.0.0.1:{kafka_port}",
            "topic": f"{prefix}.{{site}}",
            "alerts_topic": f"{prefix}-alerts",
            "batching": {"max_rows": 5000, "max_age": "100ms"},
            "retry": {"min_delay": "100ms", "max_delay": "1s"},
            "client": {"reconnect.backoff.max.ms": "1000"},
        }
    ]
    # A cap of four DuckDB blocks: the steady load passes it within seconds.
    retention = {"max_bytes": "1MiB", "check_interval": "200ms", "on_full": on_full}
    config = write_config(tmp_path, broker, f"gw-cap-{on_full}", sinks=sinks, retention=retention)
    buffer = tmp_path / "buffer.duckdb"
    gateway = GatewayProcess(config).start()
    try:
        assert wait_until(lambda: gateway_ready(buffer), timeout=30), gateway.tail()
        load = SteadyPublisher(broker, total=TOTAL, rate=3000.0).start()
        try:
            assert load.wait_all_acked(timeout=60)
        finally:
            load.stop()
        acked = load.acked()
        if on_full == "drop_oldest":
            assert wait_until(
                lambda: "unsent" in gateway.tail(20_000) and "purged" in gateway.tail(20_000),
                timeout=30,
            ), gateway.tail()
        else:
            assert wait_until(lambda: "keep_unsent" in gateway.tail(20_000), timeout=30)
        with Tansu(port=kafka_port):  # the uplink is back
            assert wait_until(
                lambda: "uplink" in gateway.tail() and _caught_up(buffer), timeout=90, interval=0.5
            ), gateway.tail()
            values = kafka_values(f"127.0.0.1:{kafka_port}", prefix)
            assert gateway.terminate() == 0
    finally:
        gateway.kill()
    dropped = buffer_counters(buffer)["purged_unsent_total"]
    lost, doubled = lost_and_doubled(acked, values)
    assert doubled == 0
    if on_full == "drop_oldest":
        # Only the oldest readings were dropped, and each was counted (a batch that was already
        # on its way to the sink when it was dropped from the buffer may still arrive).
        assert 0 < lost <= dropped
        assert set(range(dropped, TOTAL)) <= set(values)
        assert acked - set(values) <= set(range(dropped))
    else:
        assert (dropped, lost) == (0, 0)
        assert set(values) == acked


def _caught_up(buffer: Path) -> bool:
    from gateway.sqlclient import query

    try:
        table = query(
            buffer,
            "SELECT (SELECT coalesce(max(id), 0) FROM readings) AS head, "
            "(SELECT coalesce(max(position), -1) FROM sink_cursors "
            " WHERE sink = 'uplink' AND stream = 'readings') AS position",
        )
    except Exception:
        return False
    row = table.to_pylist()[0]
    return bool(row["head"] > 0 and row["head"] == row["position"])
