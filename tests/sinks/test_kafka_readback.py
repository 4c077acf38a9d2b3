"""A Kafka send that lived through a connection loss is read back before it is confirmed, so a
broker that acknowledged records it does not have cannot make the gateway skip them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pyarrow as pa
import pytest
from sinkhelpers import (
    TcpProxy,
    WriterThread,
    event_id_of,
    fill,
    kafka_config,
    kafka_messages,
    readings,
)

from gateway.buffer.store import BufferStore
from gateway.errors import SinkError
from gateway.services import free_port
from gateway.services.tansu import Tansu
from gateway.sinks.base import Attempt
from gateway.sinks.kafka import KafkaSink
from gateway.sinks.shipping import Shipping


class ForgetfulBroker(KafkaSink):
    """Stands in for a broker that acknowledges a retried send after a reconnect without
    storing it: the first send hands every record over but its last `lose` never arrive, and
    a connection loss is reported."""

    def __init__(self, *args: Any, lose: int) -> None:
        super().__init__(*args)
        self.lose = lose

    def _hand_over(self, send: Any, producer: Any, attempt: Attempt) -> None:
        if self.lose:
            kept, self.lose = len(send.values) - self.lose, 0
            part = replace(send, records=send.records.slice(0, kept), values=send.values[:kept])
            super()._hand_over(part, producer, attempt)
            send.next, send.nbytes = len(send.values), part.nbytes  # "acknowledged", all
            self._disruptions += 1
            return
        super()._hand_over(send, producer, attempt)


def test_records_a_broker_acknowledged_but_lost_are_found_missing_and_sent_again(
    tansu: Tansu,
) -> None:
    config = kafka_config(tansu.bootstrap_servers)
    sink = ForgetfulBroker(config, "gw1", lose=7)
    batch = readings(500, devices=5)
    batch = batch.add_column(0, "event_id", pa.array([f"e-{i}" for i in range(500)]))
    batch = batch.add_column(0, "id", pa.array(range(1, 501), pa.int64()))
    attempt = Attempt("readings", 1, 500, int(time.time() * 1000))
    with pytest.raises(SinkError, match=r"7 of readings 1\.\.500 not found in Kafka"):
        sink._write(batch, attempt)
    again = Attempt("readings", 1, 500, attempt.since_ms, resumed=True)  # the forwarder's retry
    sink._write(batch, again)
    asyncio.run(sink.aclose())
    seen = Counter(event_id_of(m) for m in kafka_messages(tansu.bootstrap_servers, config.name))
    assert set(seen) == {f"e-{i}" for i in range(500)}
    assert max(seen.values()) == 1


def test_a_send_cut_off_midway_is_read_back_and_confirmed_exactly_once(
    store: BufferStore,
    on_writer: WriterThread,
    proxy_factory: Callable[[int], TcpProxy],
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy_port = free_port()
    with Tansu(advertised_port=proxy_port) as broker:
        proxy = TcpProxy(broker.port)
        proxy.port = proxy_port
        proxy.start()
        config = kafka_config(broker.bootstrap_servers, batching={"max_rows": 2000})
        fill(store, readings(40_000, devices=7))
        shipping = Shipping([config], "gw1", store, on_writer, lambda: store.next_reading_id - 1)
        [forwarder] = [f for f in shipping.forwarders if f.stream == "readings"]

        async def scenario() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(shipping.run(stop))
            try:
                deadline = time.monotonic() + 60
                while forwarder.position < 4000:
                    assert time.monotonic() < deadline, "the drain did not start"
                    await asyncio.sleep(0.01)
                proxy.cut()  # mid-drain: a send is in flight or the next one starts
                await asyncio.sleep(2.0)
                proxy.restore()
                deadline = time.monotonic() + 90
                while forwarder.position < 40_000:
                    assert time.monotonic() < deadline, f"stuck at {forwarder.position}"
                    await asyncio.sleep(0.05)
            finally:
                stop.set()
                await task

        with caplog.at_level(logging.INFO, logger="gateway.sinks.kafka"):
            asyncio.run(scenario())
        seen = Counter(
            event_id_of(m) for m in kafka_messages(broker.bootstrap_servers, config.name)
        )
        proxy.cut()
    assert len(seen) == 40_000 and max(seen.values()) == 1
    checked = [
        r.getMessage() for r in caplog.records if "after a connection loss" in r.getMessage()
    ]
    assert checked, "no send was read back after the cut"
