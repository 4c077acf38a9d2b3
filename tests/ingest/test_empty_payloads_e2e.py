"""Empty payloads, one policy for every route: not a reading, not quarantined, counted; and they
leave what the rules know of a device as it was. Through a real Mosquitto and a gateway.

On MQTT an empty retained message deletes the broker's retained value; anywhere else an empty
message says nothing. Before the policy a route's decoder took one for a reading (empty text)."""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as paho

from gateway.config import (
    ApiConfig,
    BufferConfig,
    GatewayConfig,
    MqttConfig,
    RulesConfig,
    Subscription,
)
from gateway.services.mosquitto import Mosquitto
from gateway.testing import GatewayThread, publisher, wait_until

RULES = """
rules:
  - id: hot
    select: {device: d1, metric: temp}
    trigger: {type: threshold, above: 30}
    actions:
      - mqtt: {topic: "cmd/d1/fan", payload: "{value}"}
"""


def test_an_empty_payload_is_counted_not_read_and_leaves_the_rules_state_alone(
    broker: Mosquitto, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    config = GatewayConfig(
        mqtt=MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id="gw-empty",
            subscriptions=[
                Subscription(topic=t, qos=1) for t in ("sensors/#", "zigbee2mqtt/+", "nowhere/#")
            ],
        ),
        buffer=BufferConfig(path=tmp_path / "buffer.duckdb"),
        api=ApiConfig(enabled=False),
        rules=RulesConfig(files=[rules]),
    )
    commands: list[bytes | bytearray] = []
    lock = threading.Lock()

    def on_command(_c: paho.Client, _u: object, m: paho.MQTTMessage) -> None:
        with lock:
            commands.append(m.payload)

    with GatewayThread(config) as gw:
        listener = publisher(broker.host, broker.port, client_id="empty-listener")
        listener.on_message = on_command
        subscribed = threading.Event()
        listener.on_subscribe = lambda *_: subscribed.set()
        listener.subscribe("cmd/#", qos=1)
        assert subscribed.wait(10)
        pub = publisher(broker.host, broker.port, client_id="empty-sensor")
        sent = [
            ("sensors/h/d1/temp", b"31", False),  # a crossing: the rule fires
            ("sensors/h/d1/temp", b"", False),  # nothing: the rule still knows 31
            ("sensors/h/d1/temp", b"", True),  # retained: deletes the broker's retained value
            ("zigbee2mqtt/plug", b"", False),  # a JSON route
            ("nowhere/at/all", b"", False),  # no route: still not quarantined
            ("sensors/h/d1/temp", b"32", False),  # still above: no new crossing
            ("sensors/h/d1/temp", b"29", False),
            ("sensors/h/d1/temp", b"33", False),  # a crossing again
        ]
        for topic, body, retain in sent:
            pub.publish(topic, body, qos=1, retain=retain).wait_for_publish(5)
        assert wait_until(lambda: gw.gateway.stats.messages == len(sent), timeout=30)
        assert wait_until(lambda: len(commands) == 2, timeout=10)
        pub.disconnect()
        pub.loop_stop()
        listener.disconnect()
        listener.loop_stop()
        store = gw.gateway.store
        assert store is not None
        readings = store.query("SELECT device, value, text FROM readings ORDER BY id").to_pylist()
        assert [(r["device"], r["value"]) for r in readings] == [
            ("d1", 31.0),
            ("d1", 32.0),
            ("d1", 29.0),
            ("d1", 33.0),
        ]
        assert store.query("SELECT count(*) AS n FROM quarantine").to_pylist() == [{"n": 0}]
        assert gw.gateway.stats.empty_payloads == 4
        assert store.counters()["empty_payloads_total"] == 4
        assert commands == [b"31", b"33"]
