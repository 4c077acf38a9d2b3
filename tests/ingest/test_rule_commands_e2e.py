"""Rule commands through a real Mosquitto at every QoS the rules offer: QoS 0 ones are written
to the socket by the ingest itself (`publish_at_once`), QoS 1 and 2 by paho; each arrives once,
with its payload, retain flag and QoS, in the order the readings came."""

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
  - id: fast
    select: {metric: temp}
    trigger: {type: threshold, above: 30}
    actions:
      - mqtt: {topic: "cmd/{device}/fast", payload: "{value}", qos: 0}
      - mqtt: {topic: "cmd/{device}/kept", payload: "hot {value}", qos: 0, retain: true}
      - mqtt: {topic: "cmd/{device}/sure", payload: "{value}", qos: 1}
      - mqtt: {topic: "cmd/{device}/once", payload: "{value}", qos: 2}
"""


def test_commands_at_each_qos_arrive_once_in_order_with_their_flags(
    broker: Mosquitto, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    config = GatewayConfig(
        mqtt=MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id="gw-commands",
            subscriptions=[Subscription(topic="sensors/#", qos=1)],
        ),
        buffer=BufferConfig(path=tmp_path / "buffer.duckdb"),
        api=ApiConfig(enabled=False),
        rules=RulesConfig(files=[rules]),
    )
    got: dict[str, list[tuple[bytes | bytearray, int, bool]]] = {}
    lock = threading.Lock()

    def on_message(_c: paho.Client, _u: object, m: paho.MQTTMessage) -> None:
        with lock:
            got.setdefault(m.topic.rsplit("/", 1)[1], []).append((m.payload, m.qos, m.retain))

    with GatewayThread(config) as gw:
        listener = publisher(broker.host, broker.port, client_id="cmd-listener")
        listener.on_message = on_message
        subscribed = threading.Event()
        listener.on_subscribe = lambda *_: subscribed.set()
        listener.subscribe("cmd/#", qos=2)
        assert subscribed.wait(10)
        pub = publisher(broker.host, broker.port, client_id="cmd-sensor")
        hot = [f"{31 + i}.5" for i in range(40)]
        for value in hot:  # cold, then hot: each hot reading is a crossing
            pub.publish("sensors/h/d1/temp", "20", qos=1).wait_for_publish(10)
            pub.publish("sensors/h/d1/temp", value, qos=1).wait_for_publish(10)
        assert wait_until(lambda: gw.committed_readings() == 2 * len(hot), timeout=30)
        assert wait_until(lambda: all(len(got.get(k, [])) == len(hot) for k in
                                      ("fast", "kept", "sure", "once")), timeout=30)  # fmt: skip
        pub.disconnect()
        pub.loop_stop()
        listener.disconnect()
        listener.loop_stop()
        expected = [v.encode() for v in hot]
        assert got["fast"] == [(v, 0, False) for v in expected]
        assert got["kept"] == [(b"hot " + v, 0, False) for v in expected]  # live: retain 0
        assert got["sure"] == [(v, 1, False) for v in expected]
        assert got["once"] == [(v, 2, False) for v in expected]
        late: list[tuple[bytes | bytearray, bool]] = []
        reader = publisher(broker.host, broker.port, client_id="cmd-late")
        reader.on_message = lambda _c, _u, m: late.append((m.payload, m.retain))
        reader.subscribe("cmd/d1/kept", qos=0)
        assert wait_until(lambda: len(late) == 1, timeout=10)
        assert late == [(b"hot " + expected[-1], True)]  # the broker kept the last one
        reader.disconnect()
        reader.loop_stop()
