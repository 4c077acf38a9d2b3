"""A Kafka producer whose local queue fills and stays full: the sink hands the wait to the
forwarder (SinkBackpressureError), which waits as asked without counting a failure, and the same
attempt goes on where it stopped once Kafka takes messages again; every reading arrives once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
from sinkhelpers import TcpProxy, WriterThread, event_id_of, fill, kafka_config, kafka_messages
from sinkhelpers import readings as some_readings

from gateway.buffer.store import BufferStore
from gateway.services import free_port
from gateway.services.tansu import Tansu
from gateway.sinks.base import Attempt, WriteResult
from gateway.sinks.forwarder import Forwarder
from gateway.sinks.kafka import KafkaSink

QUEUE = 100  # messages librdkafka may hold before produce() refuses more
READINGS = 2000


class TinyQueue(KafkaSink):
    """A producer queue of QUEUE messages; the uplink goes down just after the first marks,
    before the producer ever connects, so its queue fills and stays full."""

    def __init__(self, *args: Any, proxy: TcpProxy) -> None:
        super().__init__(*args)
        self.proxy = proxy
        self.cut = False
        self.tries: list[Attempt] = []

    def producer_config(self) -> dict[str, Any]:
        cfg = super().producer_config()
        cfg["queue.buffering.max.messages"] = QUEUE
        return cfg

    def marks(self, batch: pa.Table, attempt: Attempt) -> dict[str, Any]:
        marks = super().marks(batch, attempt)
        if not self.cut:
            self.cut = True
            self.proxy.cut()
        return marks

    async def write_batch(self, batch: pa.Table, attempt: Attempt) -> WriteResult:
        self.tries.append(attempt)
        return await super().write_batch(batch, attempt)


async def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {seconds}s waiting for {what}"
        await asyncio.sleep(0.05)


def test_a_full_producer_queue_makes_the_forwarder_wait_then_all_arrive_once(
    store: BufferStore, on_writer: WriterThread
) -> None:
    proxy_port = free_port()
    with Tansu(advertised_port=proxy_port) as broker:
        proxy = TcpProxy(broker.port)
        proxy.port = proxy_port
        proxy.start()
        try:
            config = kafka_config(
                broker.bootstrap_servers,
                streams=["readings"],
                delivery_timeout="60s",  # what waits in the queue outlives the outage
                client={"reconnect.backoff.max.ms": "500"},
            )
            fill(store, some_readings(READINGS))
            sink = TinyQueue(config, "gw1", proxy=proxy)
            forwarder = Forwarder(
                sink, "readings", store, on_writer, batching=config.batching, retry=config.retry
            )

            async def scenario() -> None:
                stop = asyncio.Event()
                task = asyncio.create_task(forwarder.run(stop))
                try:
                    await wait_for(
                        lambda: forwarder.stats.backpressure >= 2 or task.done(),
                        30,
                        "the sink to ask twice to be tried later",
                    )
                    if task.done():
                        task.result()
                    assert forwarder.position == 0
                    assert forwarder.stats.failures == 0, forwarder.stats.last_error
                    proxy.restore()  # Kafka takes messages again
                    await wait_for(
                        lambda: forwarder.position == READINGS or task.done(),
                        90,
                        "every reading to be confirmed",
                    )
                    if task.done():
                        task.result()
                finally:
                    stop.set()
                    await task
                    await sink.aclose()

            asyncio.run(scenario())
            messages = kafka_messages(broker.bootstrap_servers, config.name)
        finally:
            proxy.cut()

    events = [event_id_of(m) for m in messages]
    assert len(events) == len(set(events)) == READINGS
    assert {(a.first, a.last) for a in sink.tries} == {(1, READINGS)}  # one attempt, tried on
    assert len(sink.tries) >= 3
    assert forwarder.stats.failures == 0 and forwarder.stats.dead_letters == 0
    assert forwarder.stats.backpressure == len(sink.tries) - 1
    assert store.get_cursor(config.name) == READINGS
