"""Subscriptions that overlap: a broker may deliver a message once per matching subscription
(Mosquitto does with MQTT 5), and each copy would be stored as a reading of its own. With
MQTT 5 the gateway gives each subscription an identifier and keeps the copy delivered for the
first subscription (in config order) that matches the topic. Through a real Mosquitto."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest

from gateway.config import ApiConfig, BufferConfig, GatewayConfig, MqttConfig, Subscription
from gateway.services.mosquitto import Mosquitto
from gateway.testing import GatewayThread, publisher, wait_until


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_a_message_two_subscriptions_match_is_one_reading(
    broker: Mosquitto, tmp_path: Path, protocol: Literal["3.1.1", "5"]
) -> None:
    config = GatewayConfig(
        mqtt=MqttConfig(
            host=broker.host,
            port=broker.port,
            protocol=protocol,
            client_id=f"gw-overlap-{protocol}",
            subscriptions=[
                Subscription(topic="sensors/#", qos=1),
                Subscription(topic="sensors/home/+/temperature", qos=1),
                Subscription(topic="sensors/home/kitchen/#", qos=0),
            ],
        ),
        buffer=BufferConfig(path=tmp_path / "buffer.duckdb"),
        api=ApiConfig(enabled=False),
    )
    sent = [
        ("sensors/home/kitchen/temperature", "21.5"),  # all three match
        ("sensors/home/hall/temperature", "19.0"),  # the first two
        ("sensors/home/kitchen/humidity", "40"),  # the first and the third
        ("sensors/garden/shed/temperature", "7.5"),  # the first only
    ]
    with GatewayThread(config) as gw:
        client = publisher(broker.host, broker.port)
        try:
            for topic, payload in sent:
                client.publish(topic, payload, qos=1).wait_for_publish(10)
            client.publish("sensors/zz/end/marker", "1", qos=1).wait_for_publish(10)
        finally:
            client.loop_stop()
        assert gw.gateway.store is not None
        store = gw.gateway.store

        def stored() -> list[tuple[object, ...]]:
            rows = store.query("SELECT topic, value FROM readings ORDER BY id").to_pylist()
            return [(r["topic"], r["value"]) for r in rows]

        assert wait_until(lambda: ("sensors/zz/end/marker", 1.0) in stored())
        pipeline = gw.gateway.pipeline
        assert pipeline is not None and wait_until(pipeline.settled)
        assert stored() == [(t, float(p)) for t, p in sent] + [("sensors/zz/end/marker", 1.0)]
