"""The whole gateway, killed with kill -9 while it uploads, loses and doubles nothing upstream."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from sinkhelpers import kafka_messages, snowflake_rows, unique

from gateway.config import load_config
from gateway.services.fakesnow import FakeSnow
from gateway.services.mosquitto import Mosquitto
from gateway.services.tansu import Tansu
from gateway.sinks.commands import sink_status
from gateway.sinks.config import SnowflakeSinkConfig
from gateway.sqlclient import running_api
from gateway.testing import GatewayProcess, publisher, wait_until

TOTAL = 20_000
DEVICES = 25


def ready(buffer: Path) -> bool:
    """The running gateway answers and is connected to its broker."""
    url = running_api(buffer)
    if url is None:
        return False
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            return bool(json.loads(response.read())["ready"])
    except OSError:
        return False


def test_kill_9_during_upload_leaves_no_reading_missing_and_none_doubled_upstream(
    broker: Mosquitto,
    tansu: Tansu,
    fakesnow: FakeSnow,
    tmp_path: Path,
    start_gateway: Callable[[Path], GatewayProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic_prefix = unique("crash")
    schema = unique("CRASH")
    batching = {"max_rows": 1500, "max_age": "100ms"}
    retry = {"min_delay": "100ms", "max_delay": "1s"}
    sinks: list[dict[str, Any]] = [
        {
            "type": "kafka",
            "name": "kafka",
            "bootstrap_servers": tansu.bootstrap_servers,
            "topic": f"{topic_prefix}.{{site}}",
            "alerts_topic": f"{topic_prefix}-alerts",
            "batching": batching,
            "retry": retry,
        },
        {
            "type": "snowflake",
            "name": "warehouse",
            "account": fakesnow.account,
            "user": fakesnow.user,
            "password": "${FAKESNOW_PASSWORD}",
            "database": "EDGE",
            "schema": schema,
            "host": fakesnow.host,
            "port": fakesnow.port,
            "protocol": "http",
            "batching": batching,
            "retry": retry,
        },
    ]
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "gateway_id": "crashy",
                "mqtt": {
                    "host": broker.host,
                    "port": broker.port,
                    "client_id": "gw-sink-crash",
                    "subscriptions": [{"topic": "sensors/#", "qos": 1}],
                },
                "buffer": {"path": str(tmp_path / "buffer.duckdb")},
                "api": {"port": 0},
                "sinks": sinks,
                "log_level": "info",
            }
        )
    )
    monkeypatch.setenv("FAKESNOW_PASSWORD", fakesnow.password)  # the config reads ${...}
    snow = SnowflakeSinkConfig.model_validate({**sinks[1], "password": fakesnow.password})

    def in_snowflake() -> int:
        try:
            return int(snowflake_rows(fakesnow, snow, "SELECT count(*) FROM readings")[0][0])
        except Exception:
            return 0  # the table is not created yet

    first = start_gateway(config)
    buffer = tmp_path / "buffer.duckdb"
    # Publish once the gateway's subscription exists (the broker keeps nothing for it before).
    assert wait_until(lambda: ready(buffer), timeout=30), (tmp_path / "gateway.log").read_text()
    pub = publisher(broker.host, broker.port, client_id="crash-publisher")
    sent = [pub.publish(f"sensors/plant/dev{i % DEVICES}/seq", str(i), qos=1) for i in range(TOTAL)]
    # Once the broker has them all, they are the gateway's session's to deliver, kill or not.
    assert wait_until(lambda: all(m.is_published() for m in sent), timeout=60)
    # Kill it hard while batches are on their way up.
    assert wait_until(lambda: in_snowflake() >= 3000, timeout=90), first.tail()
    first.kill()
    pub.loop_stop()

    second = start_gateway(config)
    assert wait_until(lambda: in_snowflake() >= TOTAL, timeout=120), in_snowflake()

    def kafka_values() -> list[float]:
        return [
            json.loads(m.value())["value"]
            for m in kafka_messages(tansu.bootstrap_servers, topic_prefix)
        ]

    assert wait_until(lambda: len(kafka_values()) >= TOTAL, timeout=60, interval=1.0)
    # `edge-gateway sinks` reads the running gateway's figures through its API.
    shown = {(e["sink"], e["stream"]): e for e in sink_status(buffer, load_config(config))}
    assert (
        shown[("kafka", "readings")]["running"] and shown[("kafka", "readings")]["type"] == "kafka"
    )
    assert wait_until(
        lambda: sink_status(buffer, load_config(config))[0]["backlog_rows"] == 0, timeout=30
    )
    assert second.terminate(30) == 0

    values = kafka_values()
    assert len(values) == TOTAL and sorted(values) == [float(i) for i in range(TOTAL)]
    assert snowflake_rows(
        fakesnow,
        snow,
        "SELECT count(*), count(DISTINCT value), min(value), max(value) FROM readings",
    ) == [(TOTAL, TOTAL, 0.0, float(TOTAL - 1))]
    log = (tmp_path / "gateway.log").read_text()
    assert "gateway stopped" in log
