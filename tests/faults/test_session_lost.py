"""The broker restarts without its persistence file while the writer still holds messages of the
old session: the new session reuses their packet ids for new messages, and acking the old ids
on the new connection would ack those new messages before they are committed."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from faulthelpers import buffer_values, lost_and_doubled, unique
from paho.mqtt.enums import CallbackAPIVersion

from gateway.buffer.store import BufferStore
from gateway.config import (
    ApiConfig,
    BufferConfig,
    GatewayConfig,
    MqttConfig,
    ReconnectConfig,
    Subscription,
)
from gateway.model import IngestBatch
from gateway.services.mosquitto import Mosquitto
from gateway.testing import GatewayThread, publisher, wait_until


def publish_values(broker: Mosquitto, values: range) -> None:
    pub = publisher(broker.host, broker.port, client_id=unique("pub"))
    infos = [pub.publish(f"sensors/plant/dev{i % 5}/seq", str(i), qos=1) for i in values]
    assert wait_until(lambda: all(m.is_published() for m in infos), timeout=30)
    pub.disconnect()
    pub.loop_stop()


def held_by_broker(broker: Mosquitto, client_id: str, wait: float = 3.0) -> set[int]:
    """Connect as the gateway's session and collect what the broker still holds for it."""
    got: set[int] = set()
    probe = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    probe.on_message = lambda _c, _u, m: got.add(int(m.payload))
    probe.connect(broker.host, broker.port)
    probe.loop_start()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        time.sleep(0.1)
    probe.disconnect()
    probe.loop_stop()
    return got


def test_acks_never_reach_a_session_that_did_not_deliver_the_message(
    broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client_id = "gw-session-lost"
    config = GatewayConfig(
        mqtt=MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id=client_id,
            subscriptions=[Subscription(topic="sensors/#", qos=1)],
            reconnect=ReconnectConfig(min_delay=0.1, max_delay=0.5),
        ),
        buffer=BufferConfig(path=tmp_path / "buffer.duckdb", max_batch=1000),
        api=ApiConfig(enabled=False),
    )
    # The writer's commits wait at a gate: first for the old session's batch, then (to stand
    # for a crash before it commits) the new session's batch never passes.
    let_old_through, release_all = threading.Event(), threading.Event()
    append = BufferStore.append

    def gated_append(store: BufferStore, batch: IngestBatch, *args: Any, **kw: Any) -> Any:
        if batch.messages and any(m.connection >= 2 for m in batch.messages):
            release_all.wait(30)  # held until the broker was asked what it still holds
        elif batch.messages:
            let_old_through.wait(30)
        return append(store, batch, *args, **kw)

    monkeypatch.setattr(BufferStore, "append", gated_append)
    with GatewayThread(config) as gw:
        ingest = gw.gateway.ingest
        assert ingest is not None
        publish_values(broker, range(0, 50))  # packet ids 1..50 of the first session
        assert wait_until(lambda: ingest.received == 50)
        broker.kill()  # a power cut; the persistence file is gone with the disk it was on
        (broker.workdir / "mosquitto.db").unlink(missing_ok=True)
        broker.start()
        assert wait_until(lambda: ingest.connects == 2 and ingest.connected.is_set())
        assert ingest.session == 2  # the broker answered the second connect: no session present
        time.sleep(0.5)  # the gateway subscribes again
        publish_values(broker, range(50, 100))  # the new session's packet ids 1..50 again
        assert wait_until(lambda: ingest.received == 100)
        let_old_through.set()  # the old session's batch commits and would be acked now
        assert wait_until(lambda: gw.gateway.stats.messages >= 50)
        time.sleep(0.5)  # what the gateway acks reaches the broker
        # The gateway dies before the new session's batch is committed: to the broker that is
        # a connection that goes away, after which the session's unacked messages wait.
        ingest.stop()
        held = held_by_broker(broker, client_id)
        release_all.set()
    assert held == set(range(50, 100)), f"the broker let go of {sorted(set(range(50, 100)) - held)}"
    assert lost_and_doubled(set(range(100)), buffer_values(config.buffer.path)) == (0, 0)
