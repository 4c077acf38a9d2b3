"""The Kafka sink: an idempotent producer, one message per record, keyed by device.

Exactly once across crashes: the idempotent producer removes duplicates within one producer
session. Before the first send of an attempt the sink notes each partition's end offset
(`marks`, recorded with the attempt); a batch sent again after a crash or an error
(`Attempt.resumed`) reads the partitions back from those offsets and sends only the event ids
that are not there yet (the `event_id` header). Offsets, not times: a clock that steps, a topic
stamped with LogAppendTime, or a gateway clock ahead of the broker's cannot make a read-back
start after what the first try delivered, and the read-back covers only what reached the
partitions since that first send, however long the gateway was away before it. A send that saw
a connection loss is read back the same way before it is confirmed: "confirmed" then means
"seen in Kafka", not "acked after a retry".

When librdkafka's local queue stays full (Kafka takes messages slower than they come), the send
stops with `SinkBackpressureError` and keeps its place; the forwarder's retry of the same
attempt goes on from there in the same producer session, whose idempotence delivers each record
it was handed once. Errors of confluent-kafka become sink errors in `kafka_errors`.

Locks, in the order they are taken: `_lock` (a send, from start to acknowledgement), then
`_clients_lock` (only while a client is made or dropped), `_encode_lock`, `_prepared_lock`, then
the encoder's own. The forwarder's read-ahead thread (`prepare`, `marks`) runs beside a send
and takes none but the last four. librdkafka's own locks come after all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from gateway.errors import SinkBackpressureError, SinkError
from gateway.sinks.base import Attempt, Rejection, Sink, WriteResult, span
from gateway.sinks.config import KafkaSinkConfig
from gateway.sinks.records import RecordEncoder, unencodable

try:
    from confluent_kafka import (
        OFFSET_BEGINNING,
        Consumer,
        KafkaError,
        KafkaException,
        Message,
        Producer,
        TopicPartition,
    )
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AdminClient,
        NewTopic,
        OffsetSpec,
    )
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "the Kafka sink needs confluent-kafka: pip install 'edge-gateway[kafka]'"
    ) from exc

logger = logging.getLogger(__name__)

EVENT_ID_HEADER = "event_id"
METADATA_TIMEOUT = 10.0
# A metadata wait looks this often at librdkafka's error events: with every broker down it
# gives up then, with librdkafka's reason, instead of after METADATA_TIMEOUT with none.
METADATA_SLICE = 1.0
# A read-back gives up after this long without a message: a long read that keeps going is not
# cut off (a retry would start it all over again, and never get through).
READBACK_STALL = 30.0
# An attempt recorded without offsets (by an older version) is read back from this long before
# its first-try time, which is all it has.
LEGACY_MARGIN_MS = 3_600_000
# The local queue full for this long, every delivery report served meanwhile: Kafka is not
# keeping up, and the send hands the wait to the forwarder (which a stop can cut short) and
# goes on after QUEUE_FULL_RETRY_AFTER, librdkafka delivering what it holds in between.
QUEUE_FULL_WAIT = 1.0
QUEUE_FULL_RETRY_AFTER = 1.0
# Errors that mean "this record will never be accepted": dead-letter it and move on.
_PERMANENT = {
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.INVALID_RECORD,
}


@contextlib.contextmanager
def kafka_errors(
    sink: str,
    doing: str,
    *,
    reason: Callable[[], str | None] | None = None,
    on_error: Callable[[], None] | None = None,
) -> Iterator[None]:
    """confluent-kafka's errors in the block as `SinkError(sink, "<doing>: <reason>")`, the
    driver's exception chained. `reason()`, when it returns one, names the cause better than the
    exception does (librdkafka's error events); `on_error` runs first (drop the producer)."""
    try:
        yield
    except KafkaException as exc:
        if on_error is not None:
            on_error()
        raise SinkError(sink, f"{doing}: {(reason and reason()) or _reason(exc)}") from exc


def _reason(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    return error.str() if isinstance(error, KafkaError) else str(exc)


def _code(exc: KafkaException) -> Any:
    error = exc.args[0] if exc.args else None
    return error.code() if isinstance(error, KafkaError) else None


@dataclass(eq=False)
class _Send:
    """One attempt's records on their way through one producer session, as lists (the produce
    loop runs once per record). Kept while the local queue is full: the retry of the same
    attempt goes on from `next` in the same session."""

    key: tuple[str, int, int]  # stream, first, last
    records: pa.Table  # what this send hands over: encodable, not upstream already
    topics: list[str]  # the attempt's topics, for a read-back
    values: list[Any]
    headers: list[tuple[str, bytes]]  # extra headers of every message (Avro's schema)
    rejected: list[Rejection]  # refused before the send, then by Kafka, for good
    disruptions: int  # librdkafka error events seen when the send began
    producer: Producer | None = None
    next: int = 0  # records handed to the producer so far
    nbytes: int = 0
    failed: list[tuple[Any, KafkaError]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.positions: list[int] = self.records.column("id").to_pylist()
        self.event_ids: list[str] = self.records.column("event_id").to_pylist()
        self.keys: list[Any] = self.records.column("key").to_pylist()
        self.destinations: list[str] = self.records.column("topic").to_pylist()

    def on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        # Only failures are reported (delivery.report.only.error); one shared callback keeps
        # the per-message cost down, and the value (it holds the event id) finds the row.
        if err is not None:
            self.failed.append((msg.value(), err))


class KafkaSink(Sink):
    """Sends batches with one idempotent producer; `write_batch` returns when all are acked."""

    def __init__(
        self, config: KafkaSinkConfig, gateway_id: str, buffer_id: str | None = None
    ) -> None:
        """`buffer_id` is unused: every record carries its event id, which holds it."""
        self.name = config.name
        self.config = config
        self.gateway_id = gateway_id
        self._encoder = RecordEncoder(
            gateway_id, {"readings": config.topic, "alerts": config.alerts_topic}
        )
        self._avro: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._producer: Producer | None = None
        self._known_topics: set[str] = set()
        self._admin: AdminClient | None = None
        self._replay_seen: dict[tuple[str, int], set[str]] = {}
        self._stopping = threading.Event()
        # Sends encoded ahead (`prepare`), by stream and span: the one being sent and the one
        # read ahead. Lock order in the module docstring.
        self._prepared: dict[tuple[str, tuple[int, int, int]], _Send] = {}
        self._encode_lock = threading.Lock()
        self._prepared_lock = threading.Lock()
        self._clients_lock = threading.Lock()
        # From librdkafka's error events (served when a client is polled): every broker is
        # down, and the latest reason (connection refused, authentication failed, ...).
        self._brokers_down = False
        self._client_error: str | None = None
        self._disruptions = 0  # librdkafka error events so far (connections lost, ...)
        self._paused: dict[str, _Send] = {}  # per stream: a send the full queue stopped

    # -- clients ----------------------------------------------------------------------------
    def client_config(self) -> dict[str, Any]:
        """librdkafka settings shared by producer, admin client and read-back consumer."""
        cfg: dict[str, Any] = {"bootstrap.servers": self.config.bootstrap_servers}
        cfg.update(self.config.client)
        cfg.update({k: v.get_secret_value() for k, v in self.config.client_secrets.items()})
        cfg["logger"] = _LibrdkafkaLog(self.name)
        cfg["error_cb"] = self._on_client_error
        return cfg

    def _on_client_error(self, err: KafkaError) -> None:
        self._disruptions += 1  # a send that saw one is read back before it is confirmed
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._brokers_down = True  # "n/n brokers are down": the other events say why
        else:
            self._client_error = err.str()

    def producer_config(self) -> dict[str, Any]:
        cfg = self.client_config()
        cfg.update(
            {
                "enable.idempotence": True,
                "acks": "all",
                "compression.type": self.config.compression,
                "linger.ms": 5,
                "batch.size": 1_000_000,
                "queue.buffering.max.messages": 1_000_000,
                "message.timeout.ms": int(self.config.delivery_timeout * 1000),
                "delivery.report.only.error": True,
            }
        )
        return cfg

    def _producer_now(self) -> Producer:
        with self._clients_lock:  # a send and the read-ahead's marks may both ask first
            if self._producer is None:
                self._producer = Producer(self.producer_config())
            return self._producer

    def _drop_producer(self) -> None:
        """After a failed batch: let every message still out reach its final outcome (each has
        one within message.timeout.ms), so none can land after the retry's read-back; then
        start a fresh producer session."""
        with self._clients_lock:
            producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            if producer.flush(self.config.delivery_timeout) > 0:
                producer.purge(in_queue=True, in_flight=True)
                producer.flush(1.0)
        except KafkaException as exc:  # the session is given up either way
            logger.debug("sink %s: dropping the producer: %s", self.name, _reason(exc))

    # -- sending ----------------------------------------------------------------------------
    async def write_batch(self, batch: pa.Table, attempt: Attempt) -> WriteResult:
        return await asyncio.to_thread(self._write, batch, attempt)

    def prepare(self, stream: str, batch: pa.Table) -> None:
        """Encode a batch ahead of its send (the forwarder calls this while draining): the
        records, their values and the lists the produce loop runs over are ready before the
        batch before it is acknowledged. Only a head start: when it fails (the schema
        registry is down), the send encodes again and reports why."""
        try:
            send = self._encode(stream, batch)
        except SinkError as exc:
            logger.debug("sink %s: encoding ahead failed: %s", self.name, exc)
            return
        self._keep(stream, batch, send)

    def _keep(self, stream: str, batch: pa.Table, send: _Send) -> None:
        with self._prepared_lock:
            self._prepared[(stream, span(batch))] = send
            while len(self._prepared) > 2:  # the batch being sent and the one read ahead
                del self._prepared[next(iter(self._prepared))]

    def _encoded(self, stream: str, batch: pa.Table) -> _Send:
        """The batch's send, encoded ahead or now."""
        with self._prepared_lock:
            send = self._prepared.pop((stream, span(batch)), None)
        return self._encode(stream, batch) if send is None else send

    def _encode(self, stream: str, batch: pa.Table) -> _Send:
        """The batch as records, without those no record can carry (rejected)."""
        with self._encode_lock:
            records = self._encoder.encode(stream, batch)
            refused = unencodable(stream, batch, "kafka")
            if refused:
                records = _without(records, refused)
            values: list[Any] = []
            headers: list[tuple[str, bytes]] = []
            if records.num_rows:
                values, headers, unfit = self._values(records, stream)
                if unfit:
                    records = _without(records, unfit)
                    values = [v for v in values if v is not None]
                    refused = refused + unfit
        topics = sorted(set(records.column("topic").to_pylist()))
        first, last, _ = span(batch)
        return _Send((stream, first, last), records, topics, values, headers, refused, 0)

    def marks(self, batch: pa.Table, attempt: Attempt) -> dict[str, Any]:
        """Before the first send: the end offset of every partition of the batch's topics
        (created first if missing), as `[topic, partition, offset]`. Offsets only grow, so
        offsets taken while the batch before is in flight (the forwarder's read-ahead) are a
        lower bound for this batch's messages; this runs beside that send and takes none of
        its locks (librdkafka's clients are thread-safe)."""
        if self._stopping.is_set():
            raise SinkError(self.name, "stopping")
        # The idempotent producer's session starts now: its handshake (about half a second
        # on Tansu) runs while the attempt is recorded, not in the first send.
        self._producer_now()
        with self._prepared_lock:
            send = self._prepared.get((attempt.stream, span(batch)))
        topics = send.topics if send is not None else self._topics_now(attempt.stream, batch)
        self._ensure_topics(topics)
        return {"offsets": self._end_offsets(topics)}

    def _topics_now(self, stream: str, batch: pa.Table) -> list[str]:
        """The topics of a batch not read ahead, from its send encoded now and kept for the
        send (encoded once); from the records alone when the values need the schema registry
        and it fails (the send reports that)."""
        try:
            send = self._encode(stream, batch)
        except SinkError as exc:
            logger.debug("sink %s: encoding for the marks failed: %s", self.name, exc)
            records = self._encoder.encode(stream, batch)
            return sorted(set(records.column("topic").to_pylist()))
        self._keep(stream, batch, send)
        return send.topics

    def _write(self, batch: pa.Table, attempt: Attempt) -> WriteResult:
        with self._lock:
            send, attempt = self._paused_send(attempt)
            if send is None:
                send = self._start(batch, attempt)
            return self._send(send, attempt)

    def _paused_send(self, attempt: Attempt) -> tuple[_Send | None, Attempt]:
        """The send of this attempt that the full queue stopped, when it can go on: in the
        same producer session, which delivers what it was handed once. Otherwise the attempt,
        marked resumed if part of it went to a session that is gone."""
        send = self._paused.pop(attempt.stream, None)
        if send is None:
            return None, attempt
        same = send.key == (attempt.stream, attempt.first, attempt.last)
        if same and send.producer is self._producer:
            return send, attempt
        if send.producer is self._producer:
            # Another attempt of the stream comes first: let the stopped one's messages reach
            # their outcome, so a read-back that later looks for them finds them.
            self._drop_producer()
        if not same:
            return None, attempt
        # Dropped after a failure (which let every message reach its outcome): the read-back
        # finds what got through; a replay reads its topics afresh for it.
        for topic in send.topics:
            self._replay_seen.pop((topic, attempt.since_ms), None)
        return None, replace(attempt, resumed=True)

    def _start(self, batch: pa.Table, attempt: Attempt) -> _Send:
        """The records of an attempt that are not upstream yet, encoded, ready to hand over."""
        send = self._encoded(attempt.stream, batch)
        key = (attempt.stream, attempt.first, attempt.last)
        self._ensure_topics(send.topics)
        if attempt.resumed or attempt.replay:
            records = send.records
            wanted = set(records.column("event_id").to_pylist())
            present = self._present(send.topics, attempt, wanted)
            if present:
                keep = [e not in present for e in records.column("event_id").to_pylist()]
                logger.info(
                    "sink %s: %d of %s %d..%d already in Kafka, sending the other %d",
                    self.name,
                    records.num_rows - sum(keep),
                    attempt.stream,
                    attempt.first,
                    attempt.last,
                    sum(keep),
                )
                values = [v for v, kept in zip(send.values, keep, strict=True) if kept]
                records = records.filter(pa.array(keep))
                topics, headers, rejected = send.topics, send.headers, send.rejected
                return _Send(key, records, topics, values, headers, rejected, self._disruptions)
        send.key, send.disruptions = key, self._disruptions
        return send

    def _verify(
        self, records: pa.Table, topics: list[str], attempt: Attempt, result: WriteResult
    ) -> None:
        """After a connection loss during the send, read the batch back before confirming it.

        The idempotent producer retries across a reconnect and counts a retry the broker calls
        a duplicate as delivered; that leans on the broker's sequence bookkeeping. One read-back
        per disrupted batch makes "confirmed" mean "seen in Kafka", whatever the broker does.
        """
        refused = {r.position for r in result.rejected}
        wanted = {
            e
            for p, e in zip(
                records.column("id").to_pylist(),
                records.column("event_id").to_pylist(),
                strict=True,
            )
            if p not in refused
        }
        present = self._upstream(topics, attempt, wanted)
        missing = sum(
            1
            for position, event_id in zip(
                records.column("id").to_pylist(),
                records.column("event_id").to_pylist(),
                strict=True,
            )
            if position not in refused and event_id not in present
        )
        if missing:
            raise SinkError(
                self.name,
                f"{missing} of {attempt.stream} {attempt.first}..{attempt.last} not found in "
                f"Kafka after a connection loss during the send; sending them again",
            )
        logger.info(
            "sink %s: %s %d..%d read back after a connection loss: all %d in Kafka",
            self.name,
            attempt.stream,
            attempt.first,
            attempt.last,
            records.num_rows - len(refused),
        )

    def _values(
        self, records: pa.Table, stream: str
    ) -> tuple[list[Any], list[tuple[str, bytes]], list[Rejection]]:
        """Each record's value (None where it cannot be encoded), extra headers, and the
        records that cannot be encoded, as rejections."""
        if self.config.format == "json":
            return records.column("value").to_pylist(), [], []
        from gateway.sinks.avro import AvroEncoder

        encoder = self._avro.get(stream)
        if encoder is None:
            auth = None
            if self.config.schema_registry_username and self.config.schema_registry_password:
                auth = (
                    self.config.schema_registry_username,
                    self.config.schema_registry_password.get_secret_value(),
                )
            encoder = AvroEncoder(self.name, stream, self.config.schema_registry_url, auth)
            self._avro[stream] = encoder
        values: list[Any] = []
        refused: list[Rejection] = []
        for position, doc, topic in zip(
            records.column("id").to_pylist(),
            records.column("value").to_pylist(),
            records.column("topic").to_pylist(),
            strict=True,
        ):
            try:
                values.append(encoder.encode_one(_avro_record(json.loads(doc), stream), topic))
            except (ValueError, TypeError, OverflowError) as exc:  # this record, never
                values.append(None)
                refused.append(Rejection(int(position), f"kafka: cannot encode as Avro: {exc}"))
        header = encoder.header()
        return values, [header] if header else [], refused

    def _send(self, send: _Send, attempt: Attempt) -> WriteResult:
        """Hand the send's records to the producer from where it stopped, then wait for every
        acknowledgement; a send that lived through a connection loss is read back."""
        if not send.records.num_rows:
            return WriteResult(bytes_sent=0, rejected=send.rejected)
        if send.producer is None:
            send.producer = self._producer_now()
        producer = send.producer
        try:
            self._hand_over(send, producer, attempt)
        except SinkBackpressureError:
            self._paused[attempt.stream] = send
            raise
        deadline = time.monotonic() + self.config.delivery_timeout + 5.0
        while producer.flush(1.0) > 0:
            if self._stopping.is_set():  # shutting down: the recorded attempt resends it
                raise SinkError(self.name, "stopped while messages were in flight")
            if time.monotonic() > deadline:
                self._drop_producer()
                raise SinkError(self.name, "delivery timed out")
        if send.failed:
            transient = [err for _value, err in send.failed if err.code() not in _PERMANENT]
            if transient:
                self._drop_producer()
                raise SinkError(
                    self.name,
                    f"delivery of {len(transient)} {attempt.stream} messages failed: "
                    f"{transient[0].str()}",
                )
            values = send.values
            by_value = dict(zip(values, send.positions, strict=True))
            for value, err in send.failed:
                key = (
                    value.decode()
                    if isinstance(value, bytes) and isinstance(values[0], str)
                    else value
                )
                send.rejected.append(Rejection(by_value[key], f"kafka: {err.str()}"))
        result = WriteResult(bytes_sent=send.nbytes, rejected=send.rejected)
        if self._disruptions != send.disruptions:
            self._verify(send.records, send.topics, attempt, result)
        return result

    def _hand_over(self, send: _Send, producer: Producer, attempt: Attempt) -> None:
        """Produce the records from `send.next` on; SinkBackpressureError when the local queue
        stays full, with `send` holding how far it got."""
        start = send.next
        at = start  # the record being handed over: where a retry goes on
        nbytes = 0
        produce = producer.produce
        extra = send.headers
        on_delivery = send.on_delivery
        try:
            with kafka_errors(self.name, "produce failed", on_error=self._drop_producer):
                for at, (position, event_id, key, topic, value) in enumerate(
                    zip(
                        send.positions[start:],
                        send.event_ids[start:],
                        send.keys[start:],
                        send.destinations[start:],
                        send.values[start:],
                        strict=True,
                    ),
                    start,
                ):
                    headers: list[tuple[str, str | bytes | None]] = [
                        (EVENT_ID_HEADER, event_id),
                        *extra,
                    ]
                    try:
                        produce(topic, value, key, headers=headers, on_delivery=on_delivery)
                    except BufferError as exc:
                        if not self._produce_when_room(producer, topic, value, key, headers, send):
                            raise SinkBackpressureError(
                                self.name,
                                f"the producer's local queue stayed full for "
                                f"{QUEUE_FULL_WAIT:.0f}s ({len(producer)} messages not yet in "
                                f"Kafka); {attempt.stream} {attempt.first}..{attempt.last} "
                                f"goes on from its record {at + 1} of {len(send.values)}",
                                retry_after=QUEUE_FULL_RETRY_AFTER,
                            ) from exc
                    except KafkaException as exc:
                        if _code(exc) not in _PERMANENT:
                            raise  # kafka_errors: the producer is dropped
                        send.rejected.append(Rejection(position, f"kafka: {_reason(exc)}"))
                        continue
                    nbytes += len(value)
                at = len(send.values)
        finally:
            send.next = at
            send.nbytes += nbytes

    def _produce_when_room(
        self,
        producer: Producer,
        topic: str,
        value: Any,
        key: Any,
        headers: list[tuple[str, str | bytes | None]],
        send: _Send,
    ) -> bool:
        """Produce once deliveries make room in the local queue; False if none came within
        QUEUE_FULL_WAIT (or the gateway is stopping)."""
        deadline = time.monotonic() + QUEUE_FULL_WAIT
        while time.monotonic() < deadline and not self._stopping.is_set():
            producer.poll(0.05)
            try:
                producer.produce(topic, value, key, headers=headers, on_delivery=send.on_delivery)
            except BufferError:
                continue
            return True
        return False

    # -- topics and read-back ---------------------------------------------------------------
    def _admin_now(self) -> AdminClient:
        with self._clients_lock:  # a send and the read-ahead's marks may both ask first
            if self._admin is None:
                self._admin = AdminClient(self.client_config())
            return self._admin

    def _ensure_topics(self, topics: list[str]) -> None:
        missing = [t for t in topics if t not in self._known_topics]
        if not missing:
            return
        admin = self._admin_now()
        existing = set(self._list_topics(admin).topics)
        to_create = [t for t in missing if t not in existing]
        if to_create and self.config.create_topics:
            futures = admin.create_topics(
                [
                    NewTopic(t, self.config.partitions, self.config.replication_factor)
                    for t in to_create
                ],
                operation_timeout=METADATA_TIMEOUT,
            )
            for topic, future in futures.items():
                with kafka_errors(self.name, f"cannot create topic {topic}"):
                    try:
                        future.result(timeout=METADATA_TIMEOUT)
                    except KafkaException as exc:
                        if _code(exc) != KafkaError.TOPIC_ALREADY_EXISTS:
                            raise
                        continue  # another gateway, or an earlier try, made it
                    logger.info("sink %s: created topic %s", self.name, topic)
        self._known_topics.update(missing)

    def _list_topics(self, admin: AdminClient) -> Any:
        """Cluster metadata, waited for in slices: once librdkafka reports every broker down
        (refused, unresolvable, authentication failed) the send fails at once, naming the
        reason, rather than after METADATA_TIMEOUT as a bare "transport failure"."""
        deadline = time.monotonic() + METADATA_TIMEOUT
        # librdkafka's latest error event says why better than the timeout does.
        with kafka_errors(self.name, "cannot reach Kafka", reason=lambda: self._client_error):
            while True:
                try:
                    metadata = admin.list_topics(
                        timeout=max(0.1, min(METADATA_SLICE, deadline - time.monotonic()))
                    )
                except KafkaException:
                    # The admin client is not polled otherwise: this serves its error events
                    # (and log lines), which would pile up unread while Kafka is away.
                    admin.poll(0)
                    if self._brokers_down or time.monotonic() >= deadline:
                        raise
                    continue
                admin.poll(0)
                self._brokers_down = False
                self._client_error = None
                return metadata

    def _end_offsets(self, topics: list[str]) -> list[list[Any]]:
        admin = self._admin_now()
        metadata = self._list_topics(admin)
        specs: dict[TopicPartition, Any] = {}
        for topic in topics:
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None:
                continue  # not there yet (created on first write): read from its start
            for partition in meta.partitions:
                specs[TopicPartition(topic, partition)] = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        if not specs:
            return []
        futures = admin.list_offsets(specs, request_timeout=METADATA_TIMEOUT)
        ends: list[list[Any]] = []
        for tp, future in futures.items():
            with kafka_errors(
                self.name, f"cannot read the end offset of {tp.topic} [{tp.partition}]"
            ):
                info = future.result(timeout=METADATA_TIMEOUT)
            ends.append([tp.topic, tp.partition, int(info.offset)])
        return ends

    def _present(self, topics: list[str], attempt: Attempt, wanted: set[str]) -> set[str]:
        """Event ids already upstream; a replay reads each topic once and keeps what it saw."""
        if not attempt.replay:
            return self._upstream(topics, attempt, wanted)
        unread = [t for t in topics if (t, attempt.since_ms) not in self._replay_seen]
        if unread:
            found = self._event_ids_since(unread, attempt.since_ms, None)
            for topic in unread:
                self._replay_seen[(topic, attempt.since_ms)] = found
        present: set[str] = set()
        for topic in topics:
            present |= self._replay_seen[(topic, attempt.since_ms)]
        return present

    def _upstream(self, topics: list[str], attempt: Attempt, wanted: set[str]) -> set[str]:
        """Which of `wanted` the attempt's earlier tries got into `topics`: read from the end
        offsets noted before its first send. A replay (`--since`) and an attempt recorded
        without offsets have only a time to start from."""
        offsets = None if attempt.marks is None else attempt.marks.get("offsets")
        if attempt.replay:
            return self._event_ids_since(topics, attempt.since_ms, wanted)
        if offsets is None:
            return self._event_ids_since(topics, attempt.since_ms - LEGACY_MARGIN_MS, wanted)
        recorded = {(str(t), int(p)): int(o) for t, p, o in offsets}
        consumer = self._readback_consumer()
        with kafka_errors(self.name, "read-back failed"), contextlib.closing(consumer):
            starts: list[TopicPartition] = []
            for topic in topics:
                meta = consumer.list_topics(topic, timeout=METADATA_TIMEOUT).topics[topic]
                if meta.error is not None:
                    continue  # no such topic: nothing of ours in it
                starts += [
                    # A partition without a noted offset came after the first send.
                    TopicPartition(topic, p, recorded.get((topic, p), OFFSET_BEGINNING))
                    for p in meta.partitions
                ]
            return self._collect(consumer, starts, wanted)

    def _event_ids_since(
        self, topics: list[str], since_ms: int, wanted: set[str] | None
    ) -> set[str]:
        """Event ids present in `topics` in messages stamped at or after `since_ms`."""
        consumer = self._readback_consumer()
        with kafka_errors(self.name, "read-back failed"), contextlib.closing(consumer):
            starts: list[TopicPartition] = []
            for topic in topics:
                meta = consumer.list_topics(topic, timeout=METADATA_TIMEOUT).topics[topic]
                if meta.error is not None:
                    continue
                asked = [TopicPartition(topic, p, since_ms - 1000) for p in meta.partitions]
                found = consumer.offsets_for_times(asked, timeout=METADATA_TIMEOUT)
                starts += [tp for tp in found if tp.offset >= 0]  # END: nothing that recent
            return self._collect(consumer, starts, wanted)

    def _readback_consumer(self) -> Consumer:
        cfg = self.client_config()
        cfg.update(
            {
                "group.id": f"edge-gateway-readback-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
                # A noted offset the log no longer holds (retention): from what it still has.
                "auto.offset.reset": "earliest",
            }
        )
        return Consumer(cfg)

    def _collect(
        self, consumer: Consumer, starts: list[TopicPartition], wanted: set[str] | None
    ) -> set[str]:
        """The event ids in the partitions from `starts` to their ends; with `wanted`, only
        those, and the read stops as soon as all of them were seen."""
        present: set[str] = set()
        missing = None if wanted is None else set(wanted)
        try:
            for msg in read_to_end(
                consumer, starts, READBACK_STALL, idle=True, stopped=self._stopping.is_set
            ):
                raw = msg.headers() or []
                pairs = raw.items() if isinstance(raw, dict) else raw
                for name, value in pairs:
                    if name != EVENT_ID_HEADER or not isinstance(value, bytes):
                        continue
                    event_id = value.decode()
                    if missing is None:
                        present.add(event_id)
                    elif event_id in missing:
                        missing.discard(event_id)
                        present.add(event_id)
                if missing is not None and not missing:
                    return present  # every one is there: the rest of the log cannot matter
        except TimeoutError as exc:
            raise SinkError(
                self.name,
                f"reading back what is already in Kafka made no progress for {READBACK_STALL:.0f}s",
            ) from exc
        if self._stopping.is_set():
            raise SinkError(self.name, "stopped while reading back what is already in Kafka")
        return present

    def stop(self) -> None:
        """The gateway is stopping: give up waiting for acks (the batch is resent on start)."""
        self._stopping.set()

    async def aclose(self) -> None:
        def close() -> None:
            with self._lock:
                self._paused.clear()  # the recorded attempts resend them on the next start
                if self._producer is not None:
                    self._producer.flush(5.0)
                    self._producer = None
                self._admin = None
                self._encoder.close()

        await asyncio.to_thread(close)


def read_to_end(
    consumer: Consumer,
    partitions: list[TopicPartition],
    timeout: float,
    *,
    idle: bool = False,
    stopped: Callable[[], bool] | None = None,
) -> Iterator[Message]:
    """Every message from each partition's start offset to its end, where the end is the
    consumer's own end-of-partition event (create it with `enable.partition.eof`): a broker's
    listed high watermark can lag behind its log (Tansu's does), and a read that stopped there
    would miss the newest messages. Raises TimeoutError if an end is not reached within
    `timeout` seconds, or, with `idle`, after `timeout` seconds without any message (a long
    read that keeps making progress goes on). Returns early once `stopped()` is true."""
    if not partitions:
        return
    consumer.assign(partitions)
    pending = {(tp.topic, tp.partition) for tp in partitions}
    deadline = time.monotonic() + timeout
    while pending:
        if stopped is not None and stopped():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"did not reach the end of {sorted(pending)}")
        messages = consumer.consume(10_000, timeout=1.0)
        if idle and messages:
            deadline = time.monotonic() + timeout
        for msg in messages:
            error = msg.error()
            if error is None:
                yield msg
            elif error.code() == KafkaError._PARTITION_EOF:
                pending.discard((str(msg.topic()), int(msg.partition() or 0)))


def partitions_from_start(consumer: Consumer, topic_prefix: str) -> list[TopicPartition]:
    """Every partition of the topics named `topic_prefix...`, at its first offset."""
    return [
        TopicPartition(topic, p, OFFSET_BEGINNING)
        for topic in consumer.list_topics(timeout=METADATA_TIMEOUT).topics
        if topic.startswith(topic_prefix)
        for p in consumer.list_topics(topic, timeout=METADATA_TIMEOUT).topics[topic].partitions
    ]


def _without(records: pa.Table, rejected: list[Rejection]) -> pa.Table:
    positions = pa.array([r.position for r in rejected], pa.int64())
    return records.filter(pc.invert(pc.is_in(records.column("id"), positions)))


class _LibrdkafkaLog:
    """librdkafka's own log lines, one level down: a broker that is down is reported as a
    SinkError by the forwarder (with backoff, librdkafka's reason in it), not as an error line
    per connect attempt."""

    def __init__(self, sink: str) -> None:
        self.sink = sink
        self.logger = logging.getLogger(f"{__name__}.librdkafka")

    def log(self, level: int, fmt: str, *args: Any) -> None:
        self.logger.log(
            max(logging.DEBUG, min(level, logging.INFO) - 10), "sink %s: " + fmt, self.sink, *args
        )


def _avro_record(doc: dict[str, Any], stream: str) -> dict[str, Any]:
    """The JSON record with the shapes Avro wants: timestamps as datetimes, tags as strings."""
    from datetime import datetime

    for name in ("event_time", "ingest_time", "alert_time"):
        if name in doc and isinstance(doc[name], str):
            doc[name] = datetime.fromisoformat(doc[name].replace("Z", "+00:00"))
    if stream == "readings":
        doc["tags"] = {str(k): str(v) for k, v in (doc.get("tags") or {}).items()}
    return doc
