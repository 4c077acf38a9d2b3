"""The box's clock jumps back and forward (a dead RTC battery, then NTP): readings keep their
arrival order and the device's own event time, and retention never drops what is unsent."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
from faulthelpers import buffer_counters, kafka_values, lost_and_doubled, unique

from gateway.app import Gateway
from gateway.config import (
    ApiConfig,
    BufferConfig,
    GatewayConfig,
    MqttConfig,
    RetentionConfig,
    Subscription,
)
from gateway.services import free_port
from gateway.services.mosquitto import Mosquitto
from gateway.services.tansu import Tansu
from gateway.sinks.config import KafkaSinkConfig
from gateway.testing import GatewayThread, publisher, wait_until

HOUR = 3600.0
DAY = 86400.0


class JumpingClock:
    """The wall clock plus an offset the test moves, as `date -s` would on the box."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def test_clock_jumps_keep_order_event_time_and_unsent_readings(
    broker: Mosquitto, tmp_path: Path
) -> None:
    kafka_port = free_port()  # the uplink is down until the end
    prefix = unique("clock")
    sink = KafkaSinkConfig.model_validate(
        {
            "type": "kafka",
            "name": "uplink",
            "bootstrap_servers": f"127.0.0.1:{kafka_port}",
            "topic": f"{prefix}.{{site}}",
            "alerts_topic": f"{prefix}-alerts",
            "batching": {"max_rows": 1000, "max_age": "50ms"},
            "retry": {"min_delay": "100ms", "max_delay": "1s"},
            "client": {"reconnect.backoff.max.ms": "1000"},
        }
    )
    config = GatewayConfig(
        mqtt=MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id="gw-clock",
            subscriptions=[Subscription(topic="sensors/#", qos=1)],
        ),
        buffer=BufferConfig(
            path=tmp_path / "buffer.duckdb",
            retention=RetentionConfig(max_age=HOUR, check_interval=0.2),
        ),
        api=ApiConfig(enabled=False),
        sinks=[sink],
    )
    clock = JumpingClock()
    device_time = 1_750_000_000.0  # the sensors keep their own (correct) clock

    def setup(gateway: Gateway) -> None:
        gateway.clock = clock

    with GatewayThread(config, setup=setup) as gw:
        pub = publisher(broker.host, broker.port, client_id="clock-publisher")

        def send(values: range) -> None:
            for i in values:
                payload = orjson.dumps({"value": i, "ts": device_time + i})
                pub.publish("sensors/plant/dev/seq", payload, qos=1).wait_for_publish(5)
            assert wait_until(lambda: gw.gateway.stats.readings >= values.stop, timeout=30)

        send(range(0, 100))
        clock.offset = -2 * HOUR  # the box's clock falls back two hours
        send(range(100, 200))
        clock.offset = 40 * DAY  # ... then leaps forty days ahead
        send(range(200, 300))
        # Retention now sees every reading of the first two phases as weeks old, and runs
        # several times; none of them has reached the sink, so none may go.
        time.sleep(1.0)
        store = gw.gateway.store
        assert store is not None
        assert store.counters()["purged_readings_total"] == 0
        rows = store.query(
            "SELECT value, epoch(event_time) AS event, epoch(ingest_time) AS ingest "
            "FROM readings ORDER BY id",
        ).to_pylist()
        with Tansu(port=kafka_port):
            assert wait_until(
                lambda: sum(kafka_values(f"127.0.0.1:{kafka_port}", prefix).values()) >= 300,
                timeout=60,
                interval=1.0,
            )
            values = kafka_values(f"127.0.0.1:{kafka_port}", prefix)
            # Once shipped, readings older than max_age by the (jumped) box clock may go.
            assert wait_until(lambda: store.counters()["purged_readings_total"] >= 200, 30)
        pub.loop_stop()
    assert lost_and_doubled(set(range(300)), values) == (0, 0)
    # Arrival order wins over the box's clock: positions follow publish order.
    assert [r["value"] for r in rows] == [float(i) for i in range(300)]
    # Event time is what the device said, whatever the box's clock did.
    assert [r["event"] for r in rows] == [device_time + i for i in range(300)]
    ingest = [r["ingest"] for r in rows]
    assert max(ingest[100:200]) < min(ingest[:100])  # the box clock went back ...
    assert min(ingest[200:]) > max(ingest[:100]) + 39 * DAY  # ... and leapt ahead
    counters = buffer_counters(config.buffer.path)
    assert counters["purged_unsent_total"] == 0
    assert counters["readings_total"] == 300
