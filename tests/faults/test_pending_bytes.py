"""Backpressure counts bytes, not only messages: with large payloads and a writer that cannot
keep up, what the gateway holds received-but-uncommitted stays under `max_pending_bytes`, each
commit under `max_batch_bytes`, and the broker keeps the rest. Counted in messages alone,
`max_pending` 200,000 of payloads up to 256 KiB would be about 50 GB."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from faulthelpers import buffer_values, lost_and_doubled, unique

from gateway.buffer.store import BufferStore
from gateway.config import ApiConfig, BufferConfig, GatewayConfig, MqttConfig, Subscription
from gateway.model import IngestBatch
from gateway.services.mosquitto import Mosquitto
from gateway.testing import GatewayThread, publisher, wait_until

PAYLOAD = 200 * 1024
COUNT = 400  # 80 MB in all
MIB = 1024 * 1024


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def test_large_payloads_behind_a_slow_writer_stay_within_the_byte_bounds(
    broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = GatewayConfig(
        mqtt=MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id="gw-bytes",
            subscriptions=[Subscription(topic="sensors/#", qos=1)],
        ),
        buffer=BufferConfig(
            path=tmp_path / "buffer.duckdb",
            max_pending_bytes=4 * MIB,
            max_batch_bytes=1 * MIB,
        ),
        api=ApiConfig(enabled=False),
    )
    writer_open = threading.Event()
    batch_bytes: list[int] = []
    append = BufferStore.append

    def slow_append(store: BufferStore, batch: IngestBatch, *args: Any, **kw: Any) -> Any:
        writer_open.wait(60)  # the writer is stuck (a slow disk) until the test lets it go
        batch_bytes.append(sum(len(m.payload) for m in batch.messages))
        return append(store, batch, *args, **kw)

    monkeypatch.setattr(BufferStore, "append", slow_append)
    with GatewayThread(config) as gw:
        ingest = gw.gateway.ingest
        assert ingest is not None
        rss_before = resident_bytes()
        pub = publisher(broker.host, broker.port, client_id=unique("big"))
        infos = [
            pub.publish(f"sensors/plant/dev{i % 4}/seq", str(i).encode().ljust(PAYLOAD), 1)
            for i in range(COUNT)
        ]
        assert wait_until(lambda: all(m.is_published() for m in infos), timeout=60)
        # The broker holds the burst; the gateway took what its byte bound allows and stopped.
        assert wait_until(lambda: ingest.received > 0)
        wait_until(lambda: False, timeout=2.0)  # time to (wrongly) read on
        held = ingest._pending_bytes
        assert held <= 4 * MIB + PAYLOAD, f"{held / MIB:.1f} MiB pending"
        assert ingest.received < 40  # ~20 pending plus the batch the writer holds
        grown = resident_bytes() - rss_before
        assert grown < 40 * MIB, f"resident memory grew by {grown / MIB:.0f} MiB"
        writer_open.set()
        assert wait_until(lambda: gw.gateway.stats.readings >= COUNT, timeout=120)
        pub.disconnect()
        pub.loop_stop()
    assert max(batch_bytes) <= 1 * MIB + PAYLOAD
    assert lost_and_doubled(set(range(COUNT)), buffer_values(config.buffer.path)) == (0, 0)
