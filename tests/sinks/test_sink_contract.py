"""The sink contract: every hook reaches the sink through whatever wraps it (telemetry's send
timing, as `edge-gateway run` composes it), a sink with the basic members only gets the hooks'
defaults, the registry of sink types, and driver errors mapped with the driver's error kept."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, get_args

import pyarrow as pa
import pytest
from confluent_kafka import KafkaError, KafkaException
from sinkhelpers import (
    RecordingSink,
    WriterThread,
    event_id_of,
    fill,
    kafka_config,
    kafka_messages,
    readings,
    run_until,
    ship,
)
from snowflake.connector.errors import OperationalError, ProgrammingError

import gateway.sinks.kafka as kafka_module
import gateway.sinks.snowflake as snowflake_module
from gateway.api.telemetry import Telemetry
from gateway.buffer.store import BufferStore
from gateway.errors import ConfigError, SinkError, SinkRejectedError
from gateway.services import free_port
from gateway.services.tansu import Tansu
from gateway.sinks import registry
from gateway.sinks.base import Attempt, Sink, WriteResult
from gateway.sinks.config import BatchingConfig, RetryConfig, SinkConfig
from gateway.sinks.forwarder import Forwarder
from gateway.sinks.kafka import KafkaSink
from gateway.sinks.shipping import Shipping
from gateway.sinks.snowflake import SnowflakeSink

FAST_RETRY = RetryConfig(min_delay=0.01, max_delay=0.05)


def ids(first: int, last: int) -> pa.Table:
    return pa.table({"id": pa.array(range(first, last + 1), pa.int64())})


class HookedSink(RecordingSink):
    """Notes every hook call; its marks name the attempt's range."""

    def __init__(self) -> None:
        super().__init__()
        self.prepared: list[tuple[str, int]] = []  # (stream, first position)
        self.marked: list[tuple[int, int]] = []
        self.stopped = 0

    def prepare(self, stream: str, batch: pa.Table) -> None:
        self.prepared.append((stream, int(batch.column("id")[0].as_py())))

    def marks(self, batch: pa.Table, attempt: Attempt) -> dict[str, Any]:
        self.marked.append((attempt.first, attempt.last))
        return {"range": [attempt.first, attempt.last]}

    def stop(self) -> None:
        self.stopped += 1


class Spy:
    """One more wrapper around a sink, as a second layer would be; notes what went through."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: list[str] = []

    async def write_batch(self, batch: pa.Table, attempt: Attempt) -> WriteResult:
        self.calls.append("write_batch")
        return await self.inner.write_batch(batch, attempt)

    async def aclose(self) -> None:
        self.calls.append("aclose")
        await self.inner.aclose()

    def prepare(self, stream: str, batch: pa.Table) -> None:
        self.calls.append("prepare")
        self.inner.prepare(stream, batch)

    def marks(self, batch: pa.Table, attempt: Attempt) -> dict[str, Any]:
        self.calls.append("marks")
        return self.inner.marks(batch, attempt)

    def stop(self) -> None:
        self.calls.append("stop")
        self.inner.stop()


def test_the_timing_wrapper_passes_every_hook_on_and_is_a_whole_sink() -> None:
    telemetry = Telemetry([])
    inner = HookedSink()
    timed = telemetry.timed(inner)
    attempt = Attempt("readings", 1, 3, 0)
    timed.prepare("readings", ids(1, 3))
    assert timed.marks(ids(1, 3), attempt) == {"range": [1, 3]}
    timed.stop()
    asyncio.run(timed.write_batch(ids(1, 3), attempt))
    assert inner.prepared == [("readings", 1)]
    assert inner.marked == [(1, 3)]
    assert inner.stopped == 1
    assert inner.batches == [(1, 3, 3)]
    assert telemetry.send_histograms()[("memory", "readings")].n == 1
    assert isinstance(timed, Sink)


@pytest.mark.parametrize("wrap", ["before", "after"], ids=["wrapped-then-given", "as-app.py"])
def test_a_forwarder_calls_every_hook_through_the_sink_it_holds(
    store: BufferStore, on_writer: WriterThread, wrap: str
) -> None:
    """Telemetry's timing and one more wrapper go around the sink, before the forwarder takes
    it, or after (gateway/app.py wraps `forwarder.sink`): a backlog drains with each attempt
    marked and the next batch prepared, every call through both wrappers."""
    fill(store, readings(1000))
    telemetry = Telemetry([])
    inner = HookedSink()
    spy = Spy(telemetry.timed(inner))
    forwarder = Forwarder(
        spy if wrap == "before" else inner,
        "readings",
        store,
        on_writer,
        batching=BatchingConfig(max_rows=100, max_age=0.01),
        retry=FAST_RETRY,
        head=lambda: store.next_reading_id - 1,
    )
    if wrap == "after":
        forwarder.sink = spy
    run_until(forwarder, lambda: forwarder.position == 1000)
    assert inner.positions == list(range(1, 1001))
    assert inner.marked == [(a.first, a.last) for a in inner.attempts]  # once each, first
    assert all(a.marks == {"range": [a.first, a.last]} for a in inner.attempts)
    assert inner.prepared, "the backlog was read (and prepared) ahead of its sends"
    assert {"marks", "prepare", "write_batch"} <= set(spy.calls)
    assert telemetry.send_histograms()[("memory", "readings")].n == len(inner.batches)


class BasicOnly:
    """A sink written against the basic members alone: no hooks."""

    name = "basic"

    def __init__(self) -> None:
        self.attempts: list[Attempt] = []

    async def write_batch(self, batch: pa.Table, attempt: Attempt) -> WriteResult:
        self.attempts.append(attempt)
        return WriteResult(bytes_sent=batch.nbytes)

    async def aclose(self) -> None:
        return None


class HalfWrapper(BasicOnly):
    """A wrapper that passes `prepare` on and forgot `marks` and `stop`."""

    def __init__(self, inner: Sink) -> None:
        super().__init__()
        self.inner = inner

    def prepare(self, stream: str, batch: pa.Table) -> None:
        self.inner.prepare(stream, batch)


def test_a_sink_without_hooks_gets_their_defaults_and_one_with_some_is_refused(
    store: BufferStore, on_writer: WriterThread
) -> None:
    fill(store, readings(10))
    basic = BasicOnly()

    def forwarder_of(sink: BasicOnly) -> Forwarder:
        return Forwarder(
            sink,
            "readings",
            store,
            on_writer,
            batching=BatchingConfig(max_rows=100, max_age=0.01),
            retry=FAST_RETRY,
        )

    f = forwarder_of(basic)
    run_until(f, lambda: f.position == 10)
    assert [(a.first, a.last, a.marks) for a in basic.attempts] == [(1, 10, {})]
    with pytest.raises(TypeError, match="has prepare but not marks, stop"):
        forwarder_of(HalfWrapper(HookedSink()))


def test_the_registry_has_a_class_for_every_sink_type_and_names_the_known_ones() -> None:
    config_types = {
        get_args(model.model_fields["type"].annotation)[0]
        for model in get_args(get_args(SinkConfig)[0])
    }
    assert set(registry.SINK_CLASSES) == config_types
    classes: dict[str, object] = {t: registry.sink_class(t) for t in config_types}
    assert classes == {"kafka": KafkaSink, "snowflake": SnowflakeSink}
    with pytest.raises(ConfigError, match=r"unknown sink type 'mqtt' \(known: kafka, snowflake\)"):
        registry.sink_class("mqtt")


def test_kafka_errors_keep_the_drivers_error_and_name_the_sink_and_what_failed() -> None:
    dropped: list[int] = []
    driver = KafkaException(KafkaError(KafkaError._TRANSPORT, "Connection refused"))
    with (
        pytest.raises(SinkError) as caught,
        kafka_module.kafka_errors("k", "produce failed", on_error=lambda: dropped.append(1)),
    ):
        raise driver
    assert str(caught.value) == "sink 'k': produce failed: Connection refused"
    assert caught.value.__cause__ is driver and dropped == [1]
    # librdkafka's error events may say why better than the exception does
    with (
        pytest.raises(
            SinkError, match=r"cannot reach Kafka: Connect to ipv4#127\.0\.0\.1:1 failed"
        ),
        kafka_module.kafka_errors(
            "k", "cannot reach Kafka", reason=lambda: "Connect to ipv4#127.0.0.1:1 failed"
        ),
    ):
        raise driver


def test_snowflake_errors_keep_the_drivers_error_and_tell_data_errors_apart() -> None:
    resets: list[int] = []

    def reset() -> None:
        resets.append(1)

    data = ProgrammingError(msg="Numeric value 'x' is out of range", errno=100038, sqlstate="22003")
    with (
        pytest.raises(SinkRejectedError) as refused,
        snowflake_module.snowflake_errors("s", "upload failed: a.parquet", reset),
    ):
        raise data
    assert "sink 's': COPY refused the rows: 100038 (22003): Numeric value" in str(refused.value)
    assert refused.value.__cause__ is data and resets == []  # the session is fine
    down = OperationalError(msg="Could not connect", errno=250001, sqlstate="08001")
    with (
        pytest.raises(SinkError) as failed,
        snowflake_module.snowflake_errors("s", "upload failed: a.parquet", reset),
    ):
        raise down
    assert (
        str(failed.value) == "sink 's': upload failed: a.parquet: 250001 (08001): Could not connect"
    )
    assert failed.value.__cause__ is down and resets == [1]


def test_a_kafka_sink_that_cannot_reach_kafka_says_why_and_keeps_librdkafkas_error() -> None:
    sink = KafkaSink(kafka_config(f"127.0.0.1:{free_port()}"), "gw1")
    table = pa.table(
        {
            **{c: readings(1).column(c) for c in readings(1).column_names},
            "id": pa.array([1], pa.int64()),
            "event_id": ["b-1"],
        }
    )
    started = time.monotonic()
    with pytest.raises(SinkError) as caught:
        sink.marks(table, Attempt("readings", 1, 1, 0))
    assert time.monotonic() - started < 12
    assert f"sink {sink.name!r}: cannot reach Kafka: " in str(caught.value)
    assert isinstance(caught.value.__cause__, KafkaException)
    asyncio.run(sink.aclose())


def test_kafka_composed_as_the_gateway_does_prepares_marks_and_delivers_once(
    store: BufferStore,
    on_writer: WriterThread,
    tansu: Tansu,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Shipping builds the sink and its forwarder, then telemetry's timing wraps the
    forwarder's sink, as gateway/app.py composes them: a backlog is encoded ahead of its
    sends, every attempt carries the partitions' end offsets, and every reading arrives
    once."""
    prepared: list[int] = []
    sent: list[Attempt] = []
    real_prepare: Callable[[KafkaSink, str, pa.Table], None] = KafkaSink.prepare
    real_write = KafkaSink.write_batch

    def noting_prepare(self: KafkaSink, stream: str, batch: pa.Table) -> None:
        prepared.append(batch.num_rows)
        real_prepare(self, stream, batch)

    async def noting_write(self: KafkaSink, batch: pa.Table, attempt: Attempt) -> WriteResult:
        sent.append(attempt)
        return await real_write(self, batch, attempt)

    monkeypatch.setattr(KafkaSink, "prepare", noting_prepare)
    monkeypatch.setattr(KafkaSink, "write_batch", noting_write)
    fill(store, readings(3000))
    config = kafka_config(
        tansu.bootstrap_servers,
        streams=["readings"],
        batching={"max_rows": 500, "max_age": "50ms"},
    )
    telemetry = Telemetry([])
    shipping = Shipping([config], "gw1", store, on_writer, lambda: store.next_reading_id - 1)
    for forwarder in shipping.forwarders:  # as gateway/app.py does
        forwarder.sink = telemetry.timed(forwarder.sink)
    ship(shipping, store)
    assert prepared, "the backlog was encoded ahead of its sends"
    assert sent and all(a.marks and a.marks["offsets"] for a in sent)
    events = [event_id_of(m) for m in kafka_messages(tansu.bootstrap_servers, config.name)]
    assert len(events) == len(set(events)) == 3000
    assert telemetry.send_histograms()[(config.name, "readings")].n == len(sent)
