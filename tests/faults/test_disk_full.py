"""A full disk under the buffer: ingest stops acking (the broker keeps the readings), nothing is
half-written, and once space returns every reading arrives exactly once."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from faulthelpers import buffer_counters, buffer_values, kafka_values, lost_and_doubled, unique

from gateway.buffer.recovery import check_buffer
from gateway.buffer.store import BufferStore
from gateway.config import ApiConfig, BufferConfig, GatewayConfig, MqttConfig, Subscription
from gateway.errors import BufferStoreError
from gateway.model import DECODED_QUARANTINE_SCHEMA, DECODED_READINGS_SCHEMA, IngestBatch
from gateway.services.mosquitto import Mosquitto
from gateway.services.tansu import Tansu
from gateway.sinks.config import KafkaSinkConfig
from gateway.testing import GatewayThread, publisher, wait_until


@dataclass
class SmallDisk:
    path: Path

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 3 MiB tmpfs for the buffer; skipped where mounting is not permitted."""
    path = tmp_path / "disk"
    path.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        pytest.skip("no `mount` command here: cannot make a small disk for the disk-full test")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield SmallDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def text_batch(start: int, n: int) -> IngestBatch:
    """`n` readings of incompressible text, so a few thousand fill the small disk."""
    now = 1_700_000_000_000_000
    table = pa.table(
        {
            "event_time": pa.array([now + i for i in range(n)], pa.timestamp("us", tz="UTC")),
            "ingest_time": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
            "device": ["dev"] * n,
            "metric": ["seq"] * n,
            "value": [float(start + i) for i in range(n)],
            "text": [secrets.token_hex(400) for _ in range(n)],
            "unit": [None] * n,
            "topic": ["sensors/plant/dev/seq"] * n,
            "tags": [None] * n,
        },
        schema=DECODED_READINGS_SCHEMA,
    )
    return IngestBatch(table, DECODED_QUARANTINE_SCHEMA.empty_table())


def test_gateway_stops_acking_on_a_full_disk_and_catches_up_when_space_returns(
    broker: Mosquitto, tansu: Tansu, small_disk: SmallDisk
) -> None:
    buffer = small_disk.path / "buffer.duckdb"
    prefix = unique("full")
    sink = KafkaSinkConfig.model_validate(
        {
            "type": "kafka",
            "name": "uplink",
            "bootstrap_servers": tansu.bootstrap_servers,
            "topic": f"{prefix}.{{site}}",
            "alerts_topic": f"{prefix}-alerts",
            "batching": {"max_rows": 2000, "max_age": "100ms"},
            "retry": {"min_delay": "100ms", "max_delay": "1s"},
        }
    )
    config = GatewayConfig(
        mqtt=MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id="gw-disk-full",
            subscriptions=[Subscription(topic="sensors/#", qos=1)],
        ),
        buffer=BufferConfig(path=buffer, max_batch=200),
        api=ApiConfig(enabled=False),
        sinks=[sink],
    )
    total = 4000
    with GatewayThread(config) as gw:
        pub = publisher(broker.host, broker.port, client_id="disk-full-publisher")
        infos = []
        for i in range(total):
            infos.append(pub.publish(f"sensors/plant/dev{i % 10}/seq", str(i), qos=1))
            # 800 bytes of noise per reading: the 3 MiB disk is full after a few thousand.
            infos.append(pub.publish(f"sensors/plant/dev{i % 10}/note", secrets.token_hex(400)))
        assert wait_until(lambda: all(m.is_published() for m in infos), timeout=60)
        stats = gw.gateway.stats
        assert wait_until(lambda: stats.commit_failures >= 2, timeout=60), "disk never filled"
        # Full: commits fail and are retried; nothing new is committed, so nothing is acked.
        stuck_at = stats.messages
        failures = stats.commit_failures
        assert wait_until(lambda: stats.commit_failures > failures + 1, timeout=30)
        assert stats.messages == stuck_at
        assert stuck_at < 2 * total
        small_disk.resize("64m")
        assert wait_until(lambda: stats.messages >= 2 * total, timeout=90), stats
        assert wait_until(
            lambda: sum(kafka_values(tansu.bootstrap_servers, prefix).values()) >= total,
            timeout=60,
            interval=1.0,
        )
        pub.loop_stop()
    assert lost_and_doubled(set(range(total)), kafka_values(tansu.bootstrap_servers, prefix)) == (
        0,
        0,
    )
    seen = buffer_values(buffer)
    assert sorted(seen) == list(range(total))
    assert set(seen.values()) == {1}
    assert buffer_counters(buffer)["readings_total"] == 2 * total
    assert check_buffer(buffer).ok


def test_a_fatal_error_on_a_full_disk_is_survived_by_reopening_the_file(
    small_disk: SmallDisk,
) -> None:
    store = BufferStore(small_disk.path / "buffer.duckdb")
    written = 0
    failed: IngestBatch | None = None
    while failed is None:
        batch = text_batch(written, 200)
        try:
            store.append(batch, [])
            written += 200
        except BufferStoreError:
            failed = batch
    # A checkpoint that cannot write invalidates the whole database (DuckDB's FATAL error).
    with pytest.raises(duckdb.FatalException, match="No space left"):
        store.reader().execute("CHECKPOINT")
    with pytest.raises(BufferStoreError):
        store.append(failed, [])
    small_disk.resize("64m")
    result = store.append(failed, [])  # the writer's retry: reopens, then commits
    assert result.first_id == written + 1
    assert store.reopens == 1
    store.append(text_batch(written + 200, 10), [])
    store.close()
    seen = buffer_values(small_disk.path / "buffer.duckdb")
    assert sorted(seen) == list(range(written + 210))
    assert set(seen.values()) == {1}
    assert check_buffer(small_disk.path / "buffer.duckdb").ok
