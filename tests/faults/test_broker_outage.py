"""The MQTT broker restarts or is unreachable for a while: the gateway reconnects with backoff to
its persistent session and every reading arrives exactly once."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from faulthelpers import buffer_values, doubled_in_buffer, kafka_values, lost_and_doubled, unique

from gateway.config import (
    ApiConfig,
    BufferConfig,
    GatewayConfig,
    MqttConfig,
    ReconnectConfig,
    Subscription,
)
from gateway.services.mosquitto import Mosquitto
from gateway.services.tansu import Tansu
from gateway.sinks.config import KafkaSinkConfig
from gateway.testing import GatewayThread, publisher, wait_until


def config_for(
    broker: Mosquitto, tmp_path: Path, client_id: str, sinks: list[KafkaSinkConfig] | None = None
) -> GatewayConfig:
    return GatewayConfig(
        mqtt=MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id=client_id,
            subscriptions=[Subscription(topic="sensors/#", qos=1)],
            reconnect=ReconnectConfig(min_delay=0.1, max_delay=1.0),
        ),
        # A short pending queue: most of a burst waits in the broker, in the session.
        buffer=BufferConfig(path=tmp_path / "buffer.duckdb", max_batch=500, max_pending=1000),
        api=ApiConfig(enabled=False),
        sinks=list(sinks or []),
    )


def publish_all(broker: Mosquitto, values: range, client_id: str) -> None:
    """Publish and wait until the broker holds every one (its PUBACK)."""
    pub = publisher(broker.host, broker.port, client_id=client_id)
    infos = [pub.publish(f"sensors/plant/dev{i % 20}/seq", str(i), qos=1) for i in values]
    assert wait_until(lambda: all(m.is_published() for m in infos), timeout=60)
    pub.disconnect()
    pub.loop_stop()


def test_broker_restarts_mid_stream_and_the_session_delivers_the_rest_once(
    broker: Mosquitto, tansu: Tansu, tmp_path: Path
) -> None:
    prefix = unique("restart")
    sink = KafkaSinkConfig.model_validate(
        {
            "type": "kafka",
            "name": "uplink",
            "bootstrap_servers": tansu.bootstrap_servers,
            "topic": f"{prefix}.{{site}}",
            "alerts_topic": f"{prefix}-alerts",
            "batching": {"max_rows": 5000, "max_age": "100ms"},
            "retry": {"min_delay": "100ms", "max_delay": "1s"},
        }
    )
    config = config_for(broker, tmp_path, "gw-broker-restart", [sink])
    with GatewayThread(config) as gw:
        ingest = gw.gateway.ingest
        assert ingest is not None
        publish_all(broker, range(0, 30_000), "before-restart")
        # Stop the broker while the gateway still has part of the burst to commit and ack.
        assert wait_until(lambda: gw.gateway.stats.readings >= 1000, timeout=30)
        broker.stop()  # SIGTERM: Mosquitto saves its sessions and queues
        assert wait_until(lambda: not ingest.connected.is_set(), timeout=10)
        committed_while_down = gw.gateway.stats.readings
        broker.start()
        assert wait_until(ingest.connected.is_set, timeout=10)  # backoff is capped at 1s
        publish_all(broker, range(30_000, 40_000), "after-restart")
        assert wait_until(lambda: gw.gateway.stats.readings >= 40_000, timeout=60)
        time.sleep(0.5)  # a stray redelivery would land now; it must not be stored again
        assert wait_until(
            lambda: sum(kafka_values(tansu.bootstrap_servers, prefix).values()) >= 40_000,
            timeout=60,
            interval=1.0,
        )
    assert committed_while_down < 40_000
    expected = set(range(40_000))
    assert lost_and_doubled(expected, buffer_values(config.buffer.path)) == (0, 0), (
        doubled_in_buffer(config.buffer.path)
    )
    assert lost_and_doubled(expected, kafka_values(tansu.bootstrap_servers, prefix)) == (0, 0)


def test_broker_unreachable_for_a_while_then_back_loses_and_doubles_nothing(
    broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = config_for(broker, tmp_path, "gw-broker-away")
    with GatewayThread(config):
        pass  # the persistent session and its subscription exist from here on
    publish_all(broker, range(0, 5_000), "while-gateway-down")
    broker.stop()
    gw = GatewayThread(config)
    starting = threading.Thread(target=gw.start, kwargs={"timeout": 60.0})
    starting.start()
    try:
        # The gateway starts with no broker to talk to and keeps trying with backoff.
        assert wait_until(
            lambda: gw.gateway.ingest is not None and gw.gateway.ingest.last_error is not None,
            timeout=30,
        )
        assert gw.gateway.ingest is not None
        assert "cannot reach MQTT broker" in str(gw.gateway.ingest.last_error)
        with caplog.at_level(logging.WARNING, logger="gateway.ingest.mqtt"):
            caplog.clear()
            time.sleep(3.0)  # unreachable for a while: several attempts, none connects
            attempts = caplog.text.count("cannot reach MQTT broker")
        assert not gw.gateway.ingest.connected.is_set()
        # Backoff doubles from 0.1 s to its 1 s cap: a handful of attempts in 3 s, not a spin.
        assert 2 <= attempts <= 12
        broker.start()
        starting.join(60)
        assert wait_until(lambda: gw.gateway.stats.readings >= 5_000, timeout=60)
        publish_all(broker, range(5_000, 8_000), "after-outage")
        assert wait_until(lambda: gw.gateway.stats.readings >= 8_000, timeout=60)
        assert gw.gateway.ingest.last_error is None
    finally:
        gw.stop()
    assert lost_and_doubled(set(range(8_000)), buffer_values(config.buffer.path)) == (0, 0)
