"""Availability through a real Mosquitto and a gateway: a Zigbee2MQTT device whose friendly
name holds a `/`, and a Sparkplug node whose MQTT will (NDEATH) the broker publishes when the
node's connection dies; an `availability` rule acts on each going offline, and again when it
comes back (on_clear), and the device registry shows where each stands."""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import BufferConfig, GatewayConfig, MqttConfig, RulesConfig, Subscription
from gateway.ingest import sparkplug as spb
from gateway.services.mosquitto import Mosquitto
from gateway.testing import GatewayThread, listener, publisher, wait_until

RULES = """
rules:
  - id: device-offline
    select: {device: ["kitchen/*", "edge-7"]}
    trigger: {type: availability, to: offline}
    actions:
      - mqtt: {topic: "alerts/offline", payload: "{device} went {text}", qos: 1}
    on_clear:
      - mqtt: {topic: "alerts/online", payload: "{device} is back", qos: 1}
"""


def test_a_device_going_offline_fires_its_rule_and_shows_in_the_registry(
    broker: Mosquitto, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    config = GatewayConfig(
        mqtt=MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id="gw-availability",
            subscriptions=[Subscription(topic=t, qos=1) for t in ("zigbee2mqtt/#", "spBv1.0/#")],
        ),
        buffer=BufferConfig(path=tmp_path / "buffer.duckdb"),
        rules=RulesConfig(files=[rules]),
    )
    watcher, heard = listener(broker.host, broker.port, "alerts/#")

    # A Sparkplug edge node: NBIRTH, and its NDEATH as the will the broker sends for it.
    death = spb.encode_payload(spb.Payload(metrics=[spb.Metric("bdSeq", 0, spb.INT64)]))
    node = paho.Client(CallbackAPIVersion.VERSION2, client_id="edge-7")
    node.will_set("spBv1.0/plant/NDEATH/edge-7", death, qos=1)
    with GatewayThread(config) as gw:
        client = publisher(broker.host, broker.port)
        try:
            sent = [
                ("zigbee2mqtt/kitchen/plug/availability", '{"state":"online"}'),
                ("zigbee2mqtt/kitchen/plug", '{"power": 41.5, "state": "ON"}'),
                ("zigbee2mqtt/kitchen/plug/set", '{"state": "OFF"}'),  # a command, not a reading
                ("zigbee2mqtt/kitchen/plug/availability", '{"state":"offline"}'),
            ]
            for topic, payload in sent:
                client.publish(topic, payload, qos=1).wait_for_publish(10)
            assert wait_until(lambda: ("alerts/offline", b"kitchen/plug went offline") in heard)
            client.publish("zigbee2mqtt/kitchen/plug/availability", "online", qos=1)
            assert wait_until(lambda: ("alerts/online", b"kitchen/plug is back") in heard)

            node.connect(broker.host, broker.port)
            node.loop_start()
            birth = spb.Payload(timestamp=int(time.time() * 1000), seq=0, metrics=[])
            node.publish("spBv1.0/plant/NBIRTH/edge-7", spb.encode_payload(birth), qos=1)
            assert wait_until(lambda: gw.gateway.stats.readings >= 5)
            node.loop_stop()
            sock = node.socket()
            assert sock is not None
            sock.close()  # the connection dies: the broker publishes the will
            assert wait_until(lambda: ("alerts/offline", b"edge-7 went offline") in heard, 20)
        finally:
            client.loop_stop()
            watcher.loop_stop()

        assert gw.gateway.store is not None
        readings = gw.gateway.store.query(
            "SELECT device, metric, text FROM readings WHERE metric IN ('availability', 'power') "
            "ORDER BY id"
        ).to_pylist()
        assert [(r["device"], r["text"]) for r in readings] == [
            ("kitchen/plug", "online"),
            ("kitchen/plug", None),
            ("kitchen/plug", "offline"),
            ("kitchen/plug", "online"),
            ("edge-7", "online"),
            ("edge-7", "offline"),
        ]

        def registry() -> dict[str, dict[str, object]]:
            assert gw.gateway.store is not None
            rows = gw.gateway.store.query("SELECT * FROM devices").to_pylist()
            return {str(r["device"]): r for r in rows}

        assert wait_until(lambda: registry().get("edge-7", {}).get("availability") == "offline")
        plug = registry()["kitchen/plug"]
        assert (plug["availability"], plug["availability_changes"], plug["messages"]) == (
            "online",
            2,
            5,
        )
    assert heard.count(("alerts/offline", b"kitchen/plug went offline")) == 1
