"""Idempotence: a batch sent again, after an error or a crash, is never delivered twice."""

from __future__ import annotations

import asyncio
import json
import time

import pyarrow as pa
from sinkhelpers import (
    WriterThread,
    event_id_of,
    fill,
    kafka_config,
    kafka_messages,
    readings,
    snowflake_config,
    snowflake_rows,
    wait_until,
)

from gateway.buffer.outbox import rows_after
from gateway.buffer.store import BufferStore
from gateway.services.fakesnow import FakeSnow
from gateway.services.tansu import Tansu
from gateway.sinks.base import Attempt, Sink
from gateway.sinks.forwarder import Forwarder
from gateway.sinks.kafka import KafkaSink
from gateway.sinks.snowflake import SnowflakeSink


def batch_of(store: BufferStore, first: int, last: int) -> tuple[Attempt, pa.Table]:
    with store.reading() as con:
        table = rows_after(con, "readings", first - 1, last, last - first + 1)
    return Attempt("readings", first, last, int(time.time() * 1000)), table


def test_snowflake_retry_does_not_load_a_batch_twice(
    store: BufferStore, fakesnow: FakeSnow
) -> None:
    fill(store, readings(1000))
    config = snowflake_config(fakesnow)
    sink = SnowflakeSink(config, "gw1", store.buffer_uid)
    attempt, table = batch_of(store, 1, 1000)

    async def send_twice() -> None:
        await sink.write_batch(table, attempt)
        again = Attempt("readings", 1, 1000, attempt.since_ms, resumed=True)
        await sink.write_batch(table, again)
        await sink.aclose()

    asyncio.run(send_twice())
    assert snowflake_rows(fakesnow, config, "SELECT count(*) FROM readings") == [(1000,)]


def test_kafka_batch_sent_again_is_not_doubled(store: BufferStore, tansu: Tansu) -> None:
    fill(store, readings(1000))
    config = kafka_config(tansu.bootstrap_servers)
    sink = KafkaSink(config, "gw1")
    attempt, table = batch_of(store, 1, 1000)
    half, _ = batch_of(store, 1, 500)
    _, first_half = batch_of(store, 1, 500)

    async def send() -> None:
        # The first try got only half out before "the error"; the retry sends the whole batch.
        await sink.write_batch(first_half, half)
        again = Attempt("readings", 1, 1000, attempt.since_ms, resumed=True)
        await sink.write_batch(table, again)
        await sink.aclose()

    asyncio.run(send())
    ids = [event_id_of(m) for m in kafka_messages(tansu.bootstrap_servers, config.name)]
    assert sorted(ids) == sorted(f"{store.buffer_uid}-{i}" for i in range(1, 1001))


def test_batch_in_flight_at_a_crash_is_resent_once_after_restart(
    store: BufferStore, on_writer: WriterThread, tansu: Tansu, fakesnow: FakeSnow
) -> None:
    """The gateway died after the sinks had the batch but before the cursor moved."""
    fill(store, readings(3000))
    kafka = kafka_config(tansu.bootstrap_servers)
    snow = snowflake_config(fakesnow)
    since = int(time.time() * 1000)
    attempt, table = batch_of(store, 1, 2000)
    sinks: list[Sink] = [KafkaSink(kafka, "gw1"), SnowflakeSink(snow, "gw1", store.buffer_uid)]
    attempt = Attempt("readings", 1, 2000, since)

    async def before_crash() -> None:
        for sink in sinks:
            await sink.write_batch(table, attempt)
            await sink.aclose()

    asyncio.run(before_crash())
    for name in (kafka.name, snow.name):  # what the forwarder wrote before sending
        store.put_state(
            f"sink:{name}:readings", {"attempt": {"first": 1, "last": 2000, "since_ms": since}}
        )

    async def after_restart() -> None:
        stop = asyncio.Event()
        fresh: list[Sink] = [KafkaSink(kafka, "gw1"), SnowflakeSink(snow, "gw1", store.buffer_uid)]
        forwarders = [
            Forwarder(sink, "readings", store, on_writer, batching=cfg.batching, retry=cfg.retry)
            for sink, cfg in zip(fresh, [kafka, snow], strict=True)
        ]
        tasks = [asyncio.create_task(f.run(stop)) for f in forwarders]
        deadline = time.monotonic() + 60
        for _ in range(2400):  # poll until confirmed (or the deadline passes)
            if all(f.position == 3000 for f in forwarders) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*tasks)
        for f in forwarders:
            await f.sink.aclose()
            assert f.position == 3000

    asyncio.run(after_restart())
    ids = [event_id_of(m) for m in kafka_messages(tansu.bootstrap_servers, kafka.name)]
    assert len(ids) == 3000 and len(set(ids)) == 3000
    assert snowflake_rows(
        fakesnow, snow, "SELECT count(*), count(DISTINCT event_id) FROM readings"
    ) == [(3000, 3000)]
    state = store.get_state(f"sink:{kafka.name}:readings")
    assert state == {}, "the attempt is cleared once confirmed"
    wait_until(lambda: store.get_cursor(kafka.name) == 3000, 5, "cursor")
    assert json.dumps(store.get_cursor(snow.name)) == "3000"
