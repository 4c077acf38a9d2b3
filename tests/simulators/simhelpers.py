"""Helpers for simulator tests: a subscriber recording what a broker delivers; small scenarios."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.services.mosquitto import Mosquitto
from simulators.scenario import Scenario, parse_scenario


@dataclass(slots=True, frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass
class Collector:
    """Subscribed to `#` (QoS 1) before anything is published; `messages` in arrival order."""

    client: paho.Client
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.messages)

    def on(self, prefix: str) -> list[Received]:
        return [m for m in self.snapshot() if m.topic.startswith(prefix)]

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()


def subscribe_all(broker: Mosquitto, topic: str = "#", client_id: str = "collector") -> Collector:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    collector = Collector(client)
    subscribed = threading.Event()

    def on_message(c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
        with collector.lock:
            collector.messages.append(Received(msg.topic, bytes(msg.payload), msg.qos, msg.retain))

    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert subscribed.wait(10), "collector did not get its SUBACK"
    return collector


def scenario(**overrides: Any) -> Scenario:
    """A small scenario: defaults below, overridden by keyword (fleet is required)."""
    data: dict[str, Any] = {
        "name": "test",
        "site": "home",
        "seed": 1,
        "start": "2026-01-15T00:00:00Z",
        "duration": "1h",
        "qos": 1,
    }
    data.update(overrides)
    return parse_scenario(data)
