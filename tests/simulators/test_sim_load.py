"""Load mode: several processes publish exactly what they count, and report as they go."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from simhelpers import subscribe_all

from gateway.config import ApiConfig, BufferConfig, GatewayConfig, MqttConfig, Subscription
from gateway.services.mosquitto import Mosquitto
from gateway.testing import GatewayThread, wait_until
from simulators.load import PAYLOADS, LoadSpec, run_load


def test_load_publishes_the_count_across_processes_and_devices(broker: Mosquitto) -> None:
    wire = subscribe_all(broker, "sensors/load/#")
    ticks: list[tuple[float, int, int, int]] = []
    try:
        summary = run_load(
            LoadSpec(broker.host, broker.port, devices=700, processes=2, count=20_000, qos=1),
            report=lambda *tick: ticks.append(tick),
        )
        assert summary.sent == 20_000 and summary.errors == 0
        # QoS 1: every counted message was acknowledged by the broker, so the subscriber gets all.
        assert wait_until(lambda: len(wire.snapshot()) >= 20_000)
    finally:
        wire.client.disconnect()
        wire.client.loop_stop()
    got = wire.snapshot()
    assert len(got) == 20_000
    assert len({m.topic for m in got}) == 700
    assert all(20.0 <= float(m.payload) <= 25.0 for m in got)
    assert ticks and ticks[-1][2] == 20_000  # the last report shows the total
    assert sum(t[1] for t in ticks) == 20_000


def test_load_command_prints_the_rate_each_second_and_a_summary(broker: Mosquitto) -> None:
    cli = Path(sys.executable).with_name("edge-gateway")
    result = subprocess.run(
        [
            str(cli),
            "simulate",
            "load",
            "--port",
            str(broker.port),
            "--count",
            "5000",
            "--devices",
            "50",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any("msg/s  total" in line for line in lines)
    assert "sent 5,000 messages (QoS 0) in" in lines[-1] and lines[-1].endswith("0 errors")


def test_load_payloads_are_readings_the_gateway_decodes(broker: Mosquitto, tmp_path: Path) -> None:
    config = GatewayConfig(
        mqtt=MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id="gw-load",
            subscriptions=[Subscription(topic=t, qos=1) for t in ("sensors/#", "zigbee2mqtt/+")],
        ),
        buffer=BufferConfig(path=tmp_path / "buffer.duckdb"),
        api=ApiConfig(enabled=False),
    )
    with GatewayThread(config) as gw:
        for payload in PAYLOADS:
            spec = LoadSpec(
                broker.host,
                broker.port,
                devices=100,
                processes=1,
                count=1000,
                qos=1,
                payload=payload,
            )
            assert run_load(spec).sent == 1000
        assert wait_until(lambda: gw.gateway.stats.messages >= 3000)
        assert gw.gateway.store is not None
        counts = gw.gateway.store.query(
            "SELECT metric, count(*) AS n, min(value) AS low FROM readings GROUP BY metric "
            "ORDER BY metric",
        ).to_pylist()
        assert gw.gateway.stats.quarantined == 0
    # plain and json: 1000 temperatures each; Zigbee2MQTT: four fields in each of 1000 states.
    assert [(r["metric"], r["n"]) for r in counts] == [
        ("battery", 1000),
        ("humidity", 1000),
        ("linkquality", 1000),
        ("temperature", 3000),
    ]
