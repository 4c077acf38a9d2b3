"""Sparkplug B history backfilled by a node is stored and tagged, and live rules do not act on it.

The rules engine drops readings older than its allowed lateness, which is what keeps an hour-old
backfill out of live rules here; the `historical` tag marks them for anyone reading the buffer.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from gateway.config import (
    ApiConfig,
    BufferConfig,
    GatewayConfig,
    MqttConfig,
    RulesConfig,
    Subscription,
)
from gateway.ingest import sparkplug as spb
from gateway.services.mosquitto import Mosquitto
from gateway.testing import GatewayThread, listener, publisher, wait_until

RULE = """
rules:
  - id: press-too-high
    select: {device: press-7, metric: Pressure}
    trigger: {type: threshold, above: 120}
    actions:
      - mqtt: {topic: commands/plant/press-7/stop, payload: "stop at {value}"}
"""


def test_backfilled_history_is_stored_tagged_and_does_not_fire_live_rules(
    broker: Mosquitto, tmp_path: Path
) -> None:
    rules = tmp_path / "press.yaml"
    rules.write_text(RULE)
    config = GatewayConfig(
        mqtt=MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id="gw-spb-rules",
            subscriptions=[Subscription(topic="spBv1.0/#", qos=1)],
        ),
        buffer=BufferConfig(path=tmp_path / "buffer.duckdb"),
        api=ApiConfig(enabled=False),
        rules=RulesConfig(files=[rules]),
    )
    watcher, heard = listener(broker.host, broker.port, "commands/#")

    now = int(time.time() * 1000)
    node, device = "spBv1.0/plant/{}/edge-1", "spBv1.0/plant/{}/edge-1/press-7"

    def ddata(seq: int, value: float, ts: int, historical: bool = False) -> bytes:
        metric = spb.Metric(None, value, alias=1, timestamp=ts, is_historical=historical)
        return spb.encode_payload(spb.Payload(timestamp=now, seq=seq, metrics=[metric]))

    sent = [
        (
            node.format("NBIRTH"),
            spb.encode_payload(
                spb.Payload(timestamp=now, seq=0, metrics=[spb.Metric("bdSeq", 0, spb.INT64)])
            ),
        ),
        (
            device.format("DBIRTH"),
            spb.encode_payload(
                spb.Payload(
                    timestamp=now,
                    seq=1,
                    metrics=[spb.Metric("Pressure", 100.0, spb.DOUBLE, alias=1, timestamp=now)],
                )
            ),
        ),
        # The node backfills what it measured during an outage an hour ago: above the limit.
        (device.format("DDATA"), ddata(2, 170.0, now - 3_600_000, historical=True)),
        (device.format("DDATA"), ddata(3, 100.0, now + 1)),
        (device.format("DDATA"), ddata(4, 150.0, now + 2)),  # live, above the limit
    ]
    try:
        with GatewayThread(config) as gw:
            pub = publisher(broker.host, broker.port, "edge-1")
            for topic, body in sent:
                pub.publish(topic, body, qos=1).wait_for_publish(5)
            pub.loop_stop()
            assert wait_until(lambda: gw.gateway.stats.messages >= len(sent))
            # Commands go out in the order of the readings that caused them: had the historical
            # 170 fired the rule, its command would come first.
            assert wait_until(lambda: len(heard) >= 1)
            assert heard[0][1] == b"stop at 150"
            assert gw.gateway.store is not None
            stored = gw.gateway.store.query(
                "SELECT value, tags FROM readings WHERE metric = 'Pressure' ORDER BY id",
            ).to_pylist()
    finally:
        watcher.disconnect()
        watcher.loop_stop()
    assert [r["value"] for r in stored] == [100.0, 170.0, 100.0, 150.0]
    assert [orjson.loads(r["tags"]).get("historical") for r in stored] == [None, "true", None, None]
