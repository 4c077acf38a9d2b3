"""Outages: a sink that is cut off falls behind while the other goes on, then catches up."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from sinkhelpers import (
    TcpProxy,
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
from gateway.services import free_port
from gateway.services.fakesnow import FakeSnow
from gateway.services.tansu import Tansu
from gateway.sinks.shipping import Shipping


async def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        await asyncio.sleep(0.05)


def test_sink_cut_off_mid_run_gets_everything_in_order_while_the_other_never_stopped(
    store: BufferStore,
    on_writer: WriterThread,
    fakesnow: FakeSnow,
    proxy_factory: Callable[[int], TcpProxy],
) -> None:
    proxy_port = free_port()
    with Tansu(advertised_port=proxy_port) as broker:
        proxy = TcpProxy(broker.port)
        proxy.port = proxy_port
        proxy.start()
        kafka = kafka_config(broker.bootstrap_servers, delivery_timeout="3s")
        snow = snowflake_config(fakesnow)
        shipping = Shipping(
            [kafka, snow], "gw1", store, on_writer, lambda: store.next_reading_id - 1
        )
        by_name = {f.sink.name: f for f in shipping.forwarders if f.stream == "readings"}
        to_kafka, to_snow = by_name[kafka.name], by_name[snow.name]

        async def scenario() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(shipping.run(stop))
            try:
                await on_writer(fill, store, readings(10_000, devices=7))
                await wait_for(
                    lambda: to_kafka.position == to_snow.position == 10_000,
                    60,
                    "both sinks to confirm the first 10,000",
                )
                proxy.cut()  # the uplink to Kafka goes down
                await on_writer(fill, store, readings(20_000, devices=7, start=10_000))
                await wait_for(lambda: to_snow.position == 30_000, 60, "Snowflake to go on")
                await wait_for(lambda: to_kafka.stats.failures > 0, 60, "Kafka to fail")
                assert to_kafka.position == 10_000, "Kafka cannot have confirmed while cut off"
                proxy.restore()
                await wait_for(lambda: to_kafka.position == 30_000, 90, "Kafka to catch up")
            finally:
                stop.set()
                await task

        asyncio.run(scenario())
        messages = kafka_messages(broker.bootstrap_servers, kafka.name)
        proxy.cut()

    ids = [event_id_of(m) for m in messages]
    assert len(ids) == 30_000 and len(set(ids)) == 30_000
    values: dict[str, list[Any]] = defaultdict(list)
    for m in sorted(messages, key=lambda m: (m.partition(), m.offset())):
        doc = json.loads(m.value())
        values[doc["device"]].append(doc["value"])
    for device, series in values.items():
        assert series == sorted(series), f"{device} out of order in Kafka"
        assert len(series) == len(set(series)), f"{device} has a doubled reading"
    rows = snowflake_rows(fakesnow, snow, "SELECT count(*), count(DISTINCT event_id) FROM readings")
    assert rows == [(30_000, 30_000)]


# With `network_timeout` set, the connector cancels a timed-out query from its own timer thread;
# while the uplink is down that cancel request fails too, in that thread, not in the gateway's.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_snowflake_cut_off_mid_run_catches_up_without_doubling_while_kafka_goes_on(
    store: BufferStore,
    on_writer: WriterThread,
    tansu: Tansu,
    fakesnow: FakeSnow,
    proxy_factory: Callable[[int], TcpProxy],
) -> None:
    proxy = proxy_factory(fakesnow.port)
    kafka = kafka_config(tansu.bootstrap_servers, streams=["readings"])
    snow = snowflake_config(
        fakesnow, port=proxy.port, streams=["readings"], network_timeout=3, login_timeout=3
    )
    shipping = Shipping([kafka, snow], "gw1", store, on_writer, lambda: store.next_reading_id - 1)
    by_name = {f.sink.name: f for f in shipping.forwarders}
    to_kafka, to_snow = by_name[kafka.name], by_name[snow.name]

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(shipping.run(stop))
        try:
            await on_writer(fill, store, readings(5_000, devices=5))
            await wait_for(
                lambda: to_kafka.position == to_snow.position == 5_000, 60, "the first 5,000"
            )
            proxy.cut()  # the uplink to Snowflake goes down
            await on_writer(fill, store, readings(10_000, devices=5, start=5_000))
            await wait_for(lambda: to_kafka.position == 15_000, 60, "Kafka to go on")
            await wait_for(lambda: to_snow.stats.failures > 0, 60, "Snowflake to fail")
            assert to_snow.position == 5_000
            proxy.restore()
            await wait_for(lambda: to_snow.position == 15_000, 90, "Snowflake to catch up")
        finally:
            stop.set()
            await task

    asyncio.run(scenario())
    rows = snowflake_rows(fakesnow, snow, "SELECT count(*), count(DISTINCT event_id) FROM readings")
    assert rows == [(15_000, 15_000)]
    assert len(kafka_messages(tansu.bootstrap_servers, kafka.name)) == 15_000
