"""A full disk under the buffer: ingest stops acking (the broker keeps the readings), nothing is
half-written, and once space returns every reading arrives exactly once."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from gateway.sinks.base import Attempt, WriteResult
from gateway.sinks.config import BatchingConfig, KafkaSinkConfig, RetryConfig
from gateway.sinks.forwarder import Forwarder
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
    with pytest.raises(duckdb.FatalException, match="No space left"), store.reading() as con:
        con.execute("CHECKPOINT")
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


class GatedSink:
    """Holds each send until `gate` is set; keeps what arrived, counting a position that a
    fresh (not resumed) attempt sends again as doubled: a resend after a failed cursor move is
    `resumed`, and real sinks recognise those rows upstream."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.received: set[int] = set()
        self.doubled: set[int] = set()

    async def write_batch(self, batch: pa.Table, attempt: Attempt) -> WriteResult:
        await self.gate.wait()
        positions = set(batch.column("id").to_pylist())
        if not attempt.resumed:
            self.doubled |= positions & self.received
        self.received |= positions
        return WriteResult(bytes_sent=batch.nbytes)

    async def aclose(self) -> None:
        return None


def test_a_forwarder_carries_on_after_the_buffer_is_reopened(small_disk: SmallDisk) -> None:
    """The buffer is invalidated (a checkpoint on a full disk) with a batch in flight, then
    reopened, which closes every cursor of the old handle: the forwarder takes fresh ones."""
    store = BufferStore(small_disk.path / "buffer.duckdb")
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer-writer")
    sink = GatedSink()

    async def on_writer(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(writer, fn, *args)

    async def commit(batch: IngestBatch) -> None:
        """As the gateway's writer: retry a failed commit; the retry reopens the file."""
        for _ in range(50):
            try:
                await on_writer(store.append, batch, [])
                return
            except BufferStoreError:
                await asyncio.sleep(0.1)
        raise AssertionError("the commit never went through")

    forwarder = Forwarder(
        sink,
        "readings",
        store,
        on_writer,
        batching=BatchingConfig(max_rows=500, max_age=0.01),
        retry=RetryConfig(min_delay=0.05, max_delay=0.2),
        head=lambda: store.next_reading_id - 1,
    )

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(forwarder.run(stop))

        async def until(condition: Callable[[], bool], what: str) -> None:
            deadline = time.monotonic() + 30
            while not condition():
                if task.done():
                    task.result()  # the forwarder died: show why
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                await asyncio.sleep(0.02)

        try:
            await commit(text_batch(0, 200))
            await until(lambda: forwarder.stats.failures == 0 and forwarder.position == 0, "start")
            sink.gate.set()
            await until(lambda: forwarder.position == 200, "the first batch")
            sink.gate.clear()  # the next batch stays in flight while the database dies
            written, failed = 200, None
            while failed is None:
                batch = text_batch(written, 200)
                try:
                    await on_writer(store.append, batch, [])
                    written += 200
                except BufferStoreError:
                    failed = batch
            with pytest.raises(duckdb.FatalException):
                await on_writer(lambda: store.write(lambda con: con.execute("CHECKPOINT")))
            sink.gate.set()  # the cursor move after this send fails: the database is invalid
            await asyncio.sleep(1.0)
            assert not task.done()
            small_disk.resize("64m")
            await commit(failed)  # reopens the file, closing the forwarder's old cursors
            await commit(text_batch(written + 200, 10))
            total = written + 210
            await until(lambda: forwarder.position == total, "delivery after the reopen")
        finally:
            stop.set()
            await task
        assert store.reopens == 1
        assert sink.received == set(range(1, total + 1))
        assert sink.doubled == set()
        assert await on_writer(store.get_cursor, "gated") == total

    try:
        asyncio.run(main())
    finally:
        writer.submit(store.close).result()
        writer.shutdown(wait=True)
