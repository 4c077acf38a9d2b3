"""The demo home against the real gateway and the demo's rules: `--check` sees the rules act."""

from __future__ import annotations

from pathlib import Path

from gateway.config import (
    ApiConfig,
    BufferConfig,
    GatewayConfig,
    LocationConfig,
    MqttConfig,
    RulesConfig,
    Subscription,
)
from gateway.services.mosquitto import Mosquitto
from gateway.testing import GatewayThread, wait_until
from simulators.runner import ScenarioRunner
from simulators.scenario import load_scenario

RULES = Path(__file__).parents[2] / "rules"


def test_demo_home_check_passes_against_the_gateway_and_its_rules(
    broker: Mosquitto, tmp_path: Path
) -> None:
    config = GatewayConfig(
        mqtt=MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id="gw-demo-check",
            subscriptions=[Subscription(topic="sensors/#", qos=1)],
        ),
        buffer=BufferConfig(path=tmp_path / "buffer.duckdb"),
        api=ApiConfig(enabled=False),
        location=LocationConfig(latitude=52.37, longitude=4.90, timezone="Europe/Amsterdam"),
        rules=RulesConfig(files=[RULES / "smart-home.yaml", RULES / "thresholds.yaml"]),
    )
    with GatewayThread(config) as gw:
        # Five times faster than the demo, so the first minute takes about ten seconds.
        runner = ScenarioRunner(
            load_scenario("demo-home"), broker.host, broker.port, speed=5, check=True
        )
        report = runner.run()
        assert report.missed == []
        assert len(report.met) == 2
        # The loop closed: the light and the valve obeyed and reported, and the gateway kept it.
        assert gw.gateway.store is not None

        def latest(device: str) -> object:
            assert gw.gateway.store is not None
            rows = gw.gateway.store.query(
                f"SELECT text FROM readings WHERE device = '{device}' AND metric = 'state' "
                "ORDER BY id DESC LIMIT 1",
            ).to_pylist()
            return rows[0]["text"] if rows else None

        assert wait_until(lambda: latest("hallway-light") == "ON")
        assert wait_until(lambda: latest("kitchen-valve") == "OFF")
