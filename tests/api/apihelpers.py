"""Helpers for the API tests: what the scenario publishes, and reading the API back."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.sinks.config import KafkaSinkConfig
from gateway.testing import GatewayThread, publisher, wait_until

TOKEN = "test-token-0123456789"

RULES = """\
rules:
  - id: room-too-hot
    description: A room above 30 degrees.
    select: {metric: temperature}
    trigger: {type: threshold, above: 30}
    actions:
      - mqtt: {topic: "commands/{device}/fan", payload: "ON"}
      - alert: {severity: critical, message: "{device} at {value} degrees"}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sent:
    """What the scenario published, per route, and what must come out of it."""

    by_route: dict[str, int] = field(default_factory=dict)
    messages: int = 0
    quarantined: int = 0
    latest: dict[tuple[str, str], float] = field(default_factory=dict)
    temperatures: dict[str, list[float]] = field(default_factory=dict)  # per device, in order

    def crossings_above(self, limit: float) -> int:
        """How often a device's temperature went above `limit` (from below or from nothing)."""
        count = 0
        for values in self.temperatures.values():
            above = False
            for value in values:
                if value > limit and not above:
                    count += 1
                above = value > limit
        return count

    def hot_now(self, limit: float) -> set[str]:
        return {d for d, values in self.temperatures.items() if values[-1] > limit}

    @property
    def readings(self) -> int:
        return sum(self.by_route.values())


@dataclass
class Scenario:
    gateway: GatewayThread
    base: str
    sent: Sent
    live_sink: str
    dead_sink: str
    token: str | None = None

    def get(self, path: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(self.base + path)
        if token or self.token:
            request.add_header("Authorization", f"Bearer {token or self.token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, dict(exc.headers), exc.read()

    def json(self, path: str) -> Any:
        status, _, body = self.get(path)
        assert status == 200, (path, status, body)
        return json.loads(body)


def kafka_sink(name: str, bootstrap: str) -> KafkaSinkConfig:
    return KafkaSinkConfig.model_validate(
        {
            "type": "kafka",
            "name": name,
            "bootstrap_servers": bootstrap,
            "topic": f"{name}.{{metric}}",
            "alerts_topic": f"{name}.alerts",
            "batching": {"max_rows": 1000, "max_age": "50ms"},
            "retry": {"min_delay": "200ms", "max_delay": "1s"},
            "delivery_timeout": "2s",
            "partitions": 1,
        }
    )


def publish_scenario(host: str, port: int) -> Sent:
    """Climate sensors (some too hot), Zigbee plugs, and messages that must be quarantined."""
    sent = Sent()
    client = publisher(host, port, client_id="api-test-publisher")
    try:
        infos = []
        temps = [21.5, 24.0, 31.5, 22.0, 35.0, 23.25]
        for i in range(30):
            device = f"room-{i % 3}"
            value = temps[i % len(temps)] + (i // 6)
            topic = f"sensors/home/{device}/temperature"
            infos.append(client.publish(topic, str(value), qos=1))
            sent.latest[(device, "temperature")] = value
            sent.temperatures.setdefault(device, []).append(value)
        sent.by_route["sensors/{site}/{device}/{metric}"] = 30
        for i in range(10):
            payload = json.dumps({"power": 10.0 + i, "voltage": 230.0})
            infos.append(client.publish("zigbee2mqtt/plug-1", payload, qos=1))
        sent.latest[("plug-1", "power")] = 19.0
        sent.by_route["zigbee2mqtt/{device...}"] = 20  # two readings per message
        infos.append(client.publish("zigbee2mqtt/plug-2", b"{not json", qos=1))
        infos.append(client.publish("sensors/too/many/levels/here", b"1", qos=1))
        sent.quarantined = 2
        sent.messages = 30 + 10 + 2
        for info in infos:
            info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()
    return sent


def sink_entry(entries: list[dict[str, Any]], sink: str, stream: str) -> dict[str, Any]:
    return next(e for e in entries if e["sink"] == sink and e["stream"] == stream)


def wait_for_sinks(scenario: Scenario, timeout: float = 30) -> None:
    """Until the live sink has everything and the dead one has reported an error."""

    def settled() -> bool:
        sinks = scenario.json("/api/sinks")["sinks"]
        live = sink_entry(sinks, scenario.live_sink, "readings")
        dead = sink_entry(sinks, scenario.dead_sink, "readings")
        return live["backlog_rows"] == 0 and live["sent_rows"] > 0 and bool(dead["last_error"])

    assert wait_until(settled, timeout), scenario.json("/api/sinks")


def rules_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "rules"
