"""Avro with a schema registry: the Confluent wire format, and the schema found by its id."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Iterator

import pytest
from sinkhelpers import (
    SchemaRegistry,
    WriterThread,
    fill,
    kafka_config,
    kafka_messages,
    readings,
)

from gateway.buffer.store import BufferStore
from gateway.services.tansu import Tansu
from gateway.sinks.avro import SCHEMA_HEADER, SCHEMAS, decode
from gateway.sinks.shipping import Shipping


@pytest.fixture
def registry() -> Iterator[SchemaRegistry]:
    running = SchemaRegistry()
    yield running
    running.close()


def test_avro_with_a_registry_uses_the_wire_format_and_registers_per_topic(
    store: BufferStore, on_writer: WriterThread, tansu: Tansu, registry: SchemaRegistry
) -> None:
    fill(store, readings(100, site="north"))
    fill(store, readings(100, site="south", start=100))
    kafka = kafka_config(
        tansu.bootstrap_servers,
        format="avro",
        schema_registry_url=registry.url,
        streams=["readings"],
    )
    shipping = Shipping([kafka], "gw1", store, on_writer, lambda: store.next_reading_id - 1)

    async def ship() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(shipping.run(stop))
        deadline = time.monotonic() + 30
        while shipping.forwarders[0].position < 200:
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.02)
        stop.set()
        await task

    asyncio.run(ship())
    assert sorted(registry.subjects) == [
        f"{kafka.name}.north.temperature-value",
        f"{kafka.name}.south.temperature-value",
    ]
    messages = kafka_messages(tansu.bootstrap_servers, kafka.name)
    assert len(messages) == 200
    for m in messages:
        value = m.value()
        assert value[0] == 0 and SCHEMA_HEADER not in dict(m.headers())
        (schema_id,) = struct.unpack(">I", value[1:5])
        schema = registry.schema(schema_id)
        assert schema == SCHEMAS["readings"]
        record = decode(value[5:], schema)
        assert record["tags"]["site"] in ("north", "south")
        assert record["event_id"] == dict(m.headers())["event_id"].decode()
