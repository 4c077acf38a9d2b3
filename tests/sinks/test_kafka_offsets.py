"""Kafka resends read back from the partitions' end offsets noted before the first send, not
from a wall-clock time: a clock that steps does not double a batch, and a backlog others wrote
to the topics while the gateway could not reach Kafka is not read back."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from sinkhelpers import (
    WriterThread,
    event_id_of,
    fill,
    kafka_config,
    kafka_messages,
    readings,
    run_until,
)

import gateway.sinks.kafka as kafka_module
from gateway.api.telemetry import Telemetry
from gateway.buffer.store import BufferStore
from gateway.errors import SinkError
from gateway.services.tansu import Tansu
from gateway.sinks.base import Attempt, WriteResult
from gateway.sinks.forwarder import Forwarder
from gateway.sinks.kafka import KafkaSink

AHEAD = 5.0  # seconds the box clock is ahead of the broker's


class JumpingClock:
    """The box's wall clock plus an offset the test moves, as NTP would."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


class Flaky(KafkaSink):
    """Unreachable while `down` (as librdkafka reports it), then its first send gets half its
    records to the broker and fails as a lost connection does; `on_cut` runs at that moment.
    Notes each send's attempt."""

    def __init__(self, *args: Any, down: bool = False, on_cut: Callable[[], None] = lambda: None):
        super().__init__(*args)
        self.down = down
        self.cut = True
        self.on_cut = on_cut
        self.sent: list[Attempt] = []

    def _ensure_topics(self, topics: list[str]) -> None:
        if self.down:
            raise SinkError(self.name, "cannot reach Kafka: Connection refused (test outage)")
        super()._ensure_topics(topics)

    def _send(self, send: Any, attempt: Attempt) -> WriteResult:
        self.sent.append(attempt)
        half = send.records.num_rows // 2
        if self.cut and half:
            self.cut = False
            super()._send(
                replace(send, records=send.records.slice(0, half), values=send.values[:half]),
                attempt,
            )
            self.on_cut()
            raise SinkError(self.name, "connection lost midway (test)")
        return super()._send(send, attempt)


@pytest.fixture
def read_back(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts the messages the sink's read-backs consume."""
    seen: Counter[str] = Counter()
    real = kafka_module.read_to_end

    def counting(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for msg in real(*args, **kwargs):
            seen["messages"] += 1
            yield msg

    monkeypatch.setattr(kafka_module, "read_to_end", counting)
    return seen


def others_write_after(seconds: float, bootstrap: str, topic: str) -> None:
    """Other gateways' messages in every partition, `seconds` from now: what arrived while this
    gateway was away. (Tansu answers a time later than every message with offset 0, where
    Kafka answers "none"; later messages make it answer as Kafka would.)"""
    time.sleep(seconds)
    producer = Producer({"bootstrap.servers": bootstrap})
    for partition in range(3):
        producer.produce(topic, b"{}", b"other", partition=partition, headers=[("event_id", "o")])
    assert producer.flush(30) == 0


def ours(bootstrap: str, prefix: str, store: BufferStore) -> Counter[str]:
    return Counter(
        e
        for e in (event_id_of(m) for m in kafka_messages(bootstrap, prefix))
        if e.startswith(store.buffer_uid)
    )


@pytest.mark.parametrize("timed", [False, True], ids=["bare", "timed-as-the-gateway-does"])
def test_a_resend_after_the_clock_stepped_back_is_not_doubled(
    store: BufferStore, on_writer: WriterThread, tansu: Tansu, timed: bool
) -> None:
    """The box clock was seconds ahead of the broker's when the batch was first tried (the
    messages carry the broker's time, as with LogAppendTime), NTP set it right, and the resend
    comes a while later: a read-back from the attempt's own time would miss what the cut send
    delivered. The same with the sink wrapped for send timing after the forwarder took it, as
    the gateway does: the marks are still taken."""
    fill(store, readings(1000))
    config = kafka_config(tansu.bootstrap_servers, streams=["readings"])
    clock = JumpingClock(offset=AHEAD)

    def stepped_back_and_away() -> None:
        clock.offset = 0.0
        topic = f"{config.name}.home.temperature"
        others_write_after(AHEAD + 1, tansu.bootstrap_servers, topic)

    sink = Flaky(config, "gw1", on_cut=stepped_back_and_away)
    forwarder = Forwarder(
        sink,
        "readings",
        store,
        on_writer,
        batching=config.batching,
        retry=config.retry,
        clock=clock,
    )
    if timed:
        forwarder.sink = Telemetry([]).timed(forwarder.sink)  # as gateway/app.py does
    run_until(forwarder, lambda: forwarder.position >= 1000, 60, close=True)
    seen = ours(tansu.bootstrap_servers, config.name, store)
    assert len(seen) == 1000 and max(seen.values()) == 1
    assert not sink.cut, "the first send was cut"
    assert len(sink.sent) >= 2 and all(a.marks and a.marks["offsets"] for a in sink.sent)


def test_a_read_back_after_a_long_outage_reads_only_what_came_since_the_first_send(
    store: BufferStore, on_writer: WriterThread, tansu: Tansu, read_back: Counter[str]
) -> None:
    """While the gateway could not reach Kafka, other gateways filled the topic; the first send
    that reaches Kafka is cut midway, and its resend reads back only from where it started."""
    backlog = 20_000
    fill(store, readings(1000))
    config = kafka_config(tansu.bootstrap_servers, streams=["readings"])
    topic = f"{config.name}.home.temperature"
    sink = Flaky(config, "gw1", down=True)
    forwarder = Forwarder(
        sink, "readings", store, on_writer, batching=config.batching, retry=config.retry
    )

    def others_write_while_we_are_away() -> None:
        admin = AdminClient({"bootstrap.servers": tansu.bootstrap_servers})
        for future in admin.create_topics([NewTopic(topic, 3, 1)]).values():
            future.result(10)
        producer = Producer(
            {
                "bootstrap.servers": tansu.bootstrap_servers,
                "linger.ms": 0,
                "batch.num.messages": 100,
            }
        )
        for i in range(backlog):
            producer.produce(topic, b"{}", f"other{i % 7}", headers=[("event_id", f"other-{i}")])
            if i % 1000 == 999:
                producer.flush(30)
        assert producer.flush(30) == 0
        sink.down = False

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(forwarder.run(stop))
        try:
            deadline = time.monotonic() + 30
            while forwarder.stats.failures < 2:
                assert time.monotonic() < deadline, "the outage was not noticed"
                await asyncio.sleep(0.05)
            await asyncio.to_thread(others_write_while_we_are_away)
            deadline = time.monotonic() + 90
            while forwarder.position < 1000:
                if task.done():
                    task.result()
                assert time.monotonic() < deadline, (
                    f"stuck at {forwarder.position}: {forwarder.stats.last_error}"
                )
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await task
            await sink.aclose()

    asyncio.run(main())
    seen = ours(tansu.bootstrap_servers, config.name, store)
    assert len(seen) == 1000 and max(seen.values()) == 1
    assert not sink.cut, "the first send was cut"
    assert read_back["messages"] > 0, "the cut send was read back"
    # Half the batch, and at most what Tansu's lagging end offsets add (its last produce batch
    # per partition): nothing like the backlog.
    assert read_back["messages"] < 2000


class CountingEncodes(KafkaSink):
    """Counts the batches its record encoder turns into records."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.encodes = 0
        encode = self._encoder.encode

        def counted(stream: str, batch: Any) -> Any:
            self.encodes += 1
            return encode(stream, batch)

        self._encoder.encode = counted  # type: ignore[method-assign]


def test_a_batch_not_read_ahead_is_encoded_once_for_its_marks_and_its_send(
    store: BufferStore, on_writer: WriterThread, tansu: Tansu
) -> None:
    """A live stream (no backlog, so no read-ahead): the marks need the batch's topics, and
    the records they were found in are the ones sent, not encoded a second time."""
    fill(store, readings(1000))
    config = kafka_config(tansu.bootstrap_servers, streams=["readings"])
    sink = CountingEncodes(config, "gw1")
    forwarder = Forwarder(
        sink, "readings", store, on_writer, batching=config.batching, retry=config.retry
    )
    run_until(forwarder, lambda: forwarder.position >= 1000, 60, close=True)
    seen = ours(tansu.bootstrap_servers, config.name, store)
    assert len(seen) == 1000 and max(seen.values()) == 1
    assert sink.encodes == 1
