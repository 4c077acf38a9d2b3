"""The broker crashes (SIGKILL, a power cut) after the gateway committed and acked a burst: on
restart it restores its last save and delivers those messages again as new (DUP=0), so neither
packet ids nor the DUP flag can tell them from new readings. On a route whose payloads carry a
device time or sequence number, `dedup_window` makes the payload the identity: nothing doubles.
A route without it stores them again: two equal plain payloads cannot be told apart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from faulthelpers import buffer_values, gateway_ready, lost_and_doubled, unique, write_config

from gateway.services.mosquitto import Mosquitto
from gateway.sqlclient import query
from gateway.testing import GatewayProcess, publisher, wait_until

BURST = 500


def committed(buffer: Path) -> int:
    try:
        table = query(buffer, "SELECT count(*) AS n FROM readings WHERE metric = 'seq'")
    except Exception:  # the gateway is starting or stopping: ask again
        return -1
    return int(table.column("n")[0].as_py())


def publish_burst(broker: Mosquitto) -> None:
    pub = publisher(broker.host, broker.port, client_id=unique("burst"))
    infos = [pub.publish(f"sensors/plant/dev{i % 5}/seq", str(i), qos=1) for i in range(BURST)]
    assert wait_until(lambda: all(m.is_published() for m in infos), timeout=30)
    pub.disconnect()
    pub.loop_stop()


@pytest.mark.parametrize("dedup_window", ["10m", None])
def test_a_broker_restored_from_its_last_save_doubles_nothing_on_a_route_with_a_window(
    broker: Mosquitto,
    tmp_path: Path,
    start_gateway: Callable[[Path], GatewayProcess],
    dedup_window: str | None,
) -> None:
    broker.stop()
    broker.extra_config = "autosave_interval 3600"  # its last save is the one taken below
    broker.start()
    route: dict[str, Any] = {"pattern": "sensors/{site}/{device}/{metric}"}
    if dedup_window is not None:
        route["dedup_window"] = dedup_window
    config = write_config(tmp_path, broker, "gw-rollback", extra={"routes": [route]})
    buffer = tmp_path / "buffer.duckdb"
    gateway = start_gateway(config)
    assert wait_until(lambda: gateway_ready(buffer), timeout=30), gateway.tail()
    assert gateway.terminate() == 0  # the session and its subscription exist from here on
    publish_burst(broker)  # queued for the gateway's session
    broker.restart()  # a graceful stop saves: the save holds the whole burst
    gateway = start_gateway(config)
    assert wait_until(lambda: committed(buffer) == BURST, timeout=30), gateway.tail()
    assert wait_until(lambda: gateway_ready(buffer), timeout=10)
    wait_until(lambda: False, timeout=1.0)  # the acks (and their barrier) reach the broker
    broker.kill()  # a crash: everything acked since the save comes back, as new
    broker.start()
    if dedup_window is None:
        assert wait_until(lambda: committed(buffer) == 2 * BURST, timeout=30), gateway.tail()
    else:
        wait_until(lambda: committed(buffer) > BURST, timeout=5.0)  # give copies time to land
    assert gateway.terminate() == 0
    lost, doubled = lost_and_doubled(set(range(BURST)), buffer_values(buffer))
    assert lost == 0
    assert doubled == (0 if dedup_window else BURST)
