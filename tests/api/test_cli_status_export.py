"""`edge-gateway status` and `export` against a running gateway: the compact view shows rules
and alerts, the live view redraws, and export pages past the API's row limit."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from apihelpers import RULES
from rich.console import Console

from gateway.config import (
    ApiConfig,
    BufferConfig,
    GatewayConfig,
    MqttConfig,
    RulesConfig,
    Subscription,
)
from gateway.services.mosquitto import Mosquitto
from gateway.status import watch_status
from gateway.testing import GatewayThread, publisher, wait_until

READINGS = 250


@pytest.fixture
def running(tmp_path: Path, broker: Mosquitto) -> Iterator[GatewayThread]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    config = GatewayConfig(
        gateway_id="cli-test",
        mqtt=MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id="cli-test",
            subscriptions=[Subscription(topic="sensors/#")],
        ),
        buffer=BufferConfig(path=tmp_path / "buffer.duckdb"),
        api=ApiConfig(port=0, sql_row_limit=100),  # smaller than one export page
        rules=RulesConfig(files=[rules]),
    )
    with GatewayThread(config) as gw:
        client = publisher(broker.host, broker.port, client_id="cli-publisher")
        infos = [
            client.publish(f"sensors/home/room-{i % 5}/temperature", f"{20 + i % 7}", qos=1)
            for i in range(READINGS - 1)
        ]
        infos.append(client.publish("sensors/home/attic/temperature", "41.0", qos=1))
        for info in infos:
            info.wait_for_publish(10)
        client.disconnect()
        client.loop_stop()
        assert wait_until(lambda: gw.gateway.stats.readings == READINGS, 20)
        assert wait_until(lambda: bool(gw.gateway.rules.engine.alerts), 10)
        yield gw


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, env=env
    )


def test_status_once_shows_the_running_gateway_with_rules_and_alerts(
    running: GatewayThread,
) -> None:
    buffer = str(running.gateway.config.buffer.path)
    result = cli("status", "--once", "--buffer", buffer)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "cli-test running for" in out
    assert "connected" in out
    assert f"readings            {READINGS}" in out
    assert "1 loaded" in out and "1 active alerts" in out


def test_watch_redraws_until_stopped(running: GatewayThread) -> None:
    buffer = running.gateway.config.buffer.path
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    draws = []

    def stop() -> bool:
        draws.append(1)
        return len(draws) > 3

    watch_status(buffer, console, interval=0.05, stop=stop)
    assert out.getvalue().count("cli-test running for") >= 3


def test_export_pages_past_the_api_row_limit(running: GatewayThread, tmp_path: Path) -> None:
    buffer = str(running.gateway.config.buffer.path)
    target = tmp_path / "export.parquet"
    result = cli("export", "--buffer", buffer, "--since", "1h", str(target))
    assert result.returncode == 0, result.stderr
    assert f"wrote {READINGS} readings" in result.stdout
    table = pq.read_table(target)
    ids = table.column("id").to_pylist()
    assert ids == sorted(set(ids)) and len(ids) == READINGS
    assert table.column("device").to_pylist()[-1] == "attic"
