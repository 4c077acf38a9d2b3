"""`edge-gateway status`, `export` and `sql` against a running gateway: the compact view shows
rules and alerts, the live view redraws, export pages past the API's row limit, and sql says
when that limit cut its answer."""

from __future__ import annotations

import csv
import io
import json
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
        service = gw.gateway.rules
        assert service is not None
        assert wait_until(lambda: service.engine is not None and bool(service.engine.alerts), 10)
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


def csv_ids(stdout: str) -> list[int]:
    return [int(row["id"]) for row in csv.DictReader(io.StringIO(stdout))]


def test_sql_says_when_the_api_row_limit_cut_the_answer(running: GatewayThread) -> None:
    buffer = str(running.gateway.config.buffer.path)
    result = cli("sql", "--buffer", buffer, "-f", "csv", "SELECT id FROM readings ORDER BY id")
    assert result.returncode == 3
    assert csv_ids(result.stdout) == list(range(1, 101))  # what came is printed, in order
    assert "cut at 100 rows" in result.stderr and "api.sql_row_limit" in result.stderr
    assert "--limit 100" in result.stderr


def test_sql_answers_within_the_limit_are_whole(running: GatewayThread) -> None:
    buffer = str(running.gateway.config.buffer.path)
    counted = cli("sql", "--buffer", buffer, "-f", "json", "SELECT count(*) AS n FROM readings")
    assert counted.returncode == 0, counted.stderr
    assert json.loads(counted.stdout) == [{"n": READINGS}]
    below = cli("sql", "-b", buffer, "-f", "csv", "SELECT id FROM readings WHERE id < 100")
    assert below.returncode == 0, below.stderr
    assert len(csv_ids(below.stdout)) == 99 and below.stderr == ""
    for limit in (40, 100):  # as many rows as asked for: nothing was cut
        asked = cli("sql", "-b", buffer, "-f", "csv", "--limit", str(limit), "FROM readings")
        assert asked.returncode == 0, asked.stderr
        assert len(csv_ids(asked.stdout)) == limit and asked.stderr == ""
