"""Delivery: every buffered reading reaches Kafka and Snowflake once, in order per device."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from typing import Any

from sinkhelpers import (
    WriterThread,
    event_id_of,
    fill,
    kafka_config,
    kafka_messages,
    readings,
    snowflake_config,
    snowflake_rows,
)

from gateway.buffer.store import BufferStore
from gateway.services.fakesnow import FakeSnow
from gateway.services.tansu import Tansu
from gateway.sinks.shipping import Shipping


async def ship_until_confirmed(shipping: Shipping, head: int, seconds: float = 90.0) -> None:
    """Run the forwarders until every readings cursor reached `head`, then stop them."""
    stop = asyncio.Event()
    task = asyncio.create_task(shipping.run(stop))
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if all(f.position >= head for f in shipping.forwarders if f.stream == "readings"):
                return
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        raise AssertionError(f"not confirmed in {seconds}s: {shipping.status()}")
    finally:
        stop.set()
        await task


def assert_in_device_order(values_by_device: dict[str, list[float]]) -> None:
    for device, values in values_by_device.items():
        assert values == sorted(values), f"{device}: readings out of order"


def test_50k_readings_arrive_exactly_once_in_kafka_and_snowflake(
    store: BufferStore, on_writer: WriterThread, tansu: Tansu, fakesnow: FakeSnow
) -> None:
    fill(store, readings(50_000, devices=20))
    kafka = kafka_config(tansu.bootstrap_servers)
    snow = snowflake_config(fakesnow)
    shipping = Shipping([kafka, snow], "gw1", store, on_writer, lambda: store.next_reading_id - 1)
    asyncio.run(ship_until_confirmed(shipping, 50_000))

    expected = {f"{store.buffer_uid}-{i}" for i in range(1, 50_001)}
    messages = kafka_messages(tansu.bootstrap_servers, kafka.name)
    ids = [event_id_of(m) for m in messages]
    assert len(ids) == 50_000 and set(ids) == expected
    assert {m.topic() for m in messages} == {f"{kafka.name}.home.temperature"}
    by_device: dict[str, list[float]] = defaultdict(list)
    partitions_of: dict[str, set[int]] = defaultdict(set)
    for m in sorted(messages, key=lambda m: (m.partition(), m.offset())):
        doc: dict[str, Any] = json.loads(m.value())
        assert m.key().decode() == doc["device"] and doc["gateway_id"] == "gw1"
        by_device[doc["device"]].append(doc["value"])
        partitions_of[doc["device"]].add(m.partition())
    assert all(len(p) == 1 for p in partitions_of.values()), "a device spans partitions"
    assert_in_device_order(by_device)

    rows = snowflake_rows(
        fakesnow,
        snow,
        "SELECT count(*), count(DISTINCT event_id), min(tags:site::varchar), "
        "max(gateway_id) FROM readings",
    )
    assert rows == [(50_000, 50_000, "home", "gw1")]
