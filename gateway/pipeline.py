"""The one path of a reading: take -> decode once -> rules at once, and commit -> ack.

    event loop: the ingest reads the socket, the pipeline takes, drops redeliveries, decodes;
        the rules evaluate the decoded readings at once, as lists (each command is written to
        the socket as it is made: before the rest of the batch is evaluated, before the Arrow
        table is built and before the commit)
    event loop --> writer thread: one DuckDB transaction (batches waiting meanwhile merge)
    writer thread --> event loop: ack to the broker, then the batch listeners (sinks, telemetry)

One thread hand-off from the MQTT callback to the commit, and none from a reading to its rule's
command. The writer thread only talks to DuckDB: reading the socket, decoding, the redelivery
bookkeeping and the acks stay on the event loop.

Decoded batches wait for the commit until `max_batch` messages (or `max_batch_bytes`) wait,
or `flush_interval` passed since the oldest, and while a commit is in flight. Beyond one
waiting batch the pipeline takes nothing more: the ingest's pending list fills, the ingest stops
reading the socket, and the broker holds the rest (it keeps unacked QoS 1 messages).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import pyarrow as pa

from gateway.config import BufferConfig
from gateway.errors import BufferStoreError
from gateway.ingest.redelivery import InflightEntry
from gateway.model import IngestBatch, RawMessage, ReadingColumns, joined_devices

logger = logging.getLogger(__name__)

T = TypeVar("T")

BatchListener = Callable[[pa.Table], Awaitable[None]]
"""Called after each commit with the committed readings (READINGS_SCHEMA, ids set), in order."""

OnWriter = Callable[..., Awaitable[Any]]
"""Runs a function on the thread that owns the buffer's write connection."""


class MessageSource(Protocol):
    """Where messages come from and where their acks go (gateway.ingest.mqtt.MqttIngest); all
    on the event loop."""

    def take(self, max_count: int, max_bytes: int | None = None) -> list[RawMessage]: ...
    def pending(self) -> int: ...
    def acks_confirmed(self) -> int: ...
    def ack(self, messages: list[RawMessage], batch: int) -> None: ...
    def stop(self) -> None: ...


class Redeliveries(Protocol):
    """The redelivery bookkeeping (gateway.ingest.redelivery.RedeliveryFilter)."""

    confirmed_upto: int

    def remember(self, messages: list[RawMessage]) -> tuple[list[InflightEntry], int]: ...
    def confirm(self, upto_batch: int) -> None: ...


class Decoder(Protocol):
    """Drops redeliveries and decodes (gateway.ingest.decoding.BatchDecoder)."""

    def decode(
        self,
        messages: list[RawMessage],
        before_tables: Callable[[ReadingColumns, list[int]], None] | None = None,
    ) -> IngestBatch: ...
    def committed(self, batch: IngestBatch) -> None: ...


class Committed(Protocol):
    """What a commit wrote (gateway.buffer.store.CommitResult)."""

    @property
    def readings(self) -> pa.Table: ...  # READINGS_SCHEMA, ids set
    @property
    def quarantined(self) -> int: ...
    @property
    def copies(self) -> int: ...


class BatchWriter(Protocol):
    """Commits a batch in one transaction (gateway.buffer.store.BufferStore); on the writer."""

    def append(
        self, batch: IngestBatch, inflight: list[InflightEntry], forget_upto_batch: int = 0
    ) -> Committed: ...


class Evaluates(Protocol):
    """Sees every decoded batch before its commit (gateway.rules.service.RulesService)."""

    def evaluate(self, columns: ReadingColumns, retained: list[int]) -> None: ...


@dataclass
class IngestStats:
    """Figures for `status`, the API and metrics; updated after each commit."""

    started_at: float = field(default_factory=time.time)
    messages: int = 0
    readings: int = 0
    quarantined: int = 0
    duplicates: int = 0
    empty_payloads: int = 0
    batches: int = 0
    commit_failures: int = 0
    last_commit_at: float | None = None
    recent: list[tuple[float, int]] = field(default_factory=list)  # (time, readings) per commit

    def record(
        self, now: float, messages: int, committed: Committed, redeliveries: int, empty: int = 0
    ) -> None:
        readings = int(committed.readings.num_rows)
        self.messages += messages
        self.readings += readings
        self.quarantined += committed.quarantined
        self.duplicates += redeliveries + committed.copies
        self.empty_payloads += empty
        self.batches += 1
        self.last_commit_at = now
        self.recent.append((now, readings))
        horizon = now - 10.0
        while self.recent and self.recent[0][0] < horizon:
            self.recent.pop(0)

    def readings_per_second(self, now: float) -> float:
        window = [n for t, n in self.recent if t >= now - 10.0]
        span = min(10.0, max(now - self.started_at, 1e-3))
        return sum(window) / span


@dataclass
class _Decoded:
    """Messages taken together, decoded, waiting for their commit."""

    messages: list[RawMessage]  # every one taken: all are acked after the commit
    batch: IngestBatch
    inflight: list[InflightEntry]
    number: int  # the batch number in the redelivery bookkeeping

    @property
    def payload_bytes(self) -> int:
        return sum(len(m.payload) for m in self.messages)


def merge(parts: list[_Decoded]) -> _Decoded:
    """Decoded batches that wait together, as one commit (their order kept)."""
    if len(parts) == 1:
        return parts[0]
    retained: list[int] = []
    offset = 0
    for part in parts:
        retained.extend(offset + row for row in part.batch.retained)
        offset += part.batch.reading_count
    batches = [p.batch for p in parts]
    batch = IngestBatch(
        # One chunk: the buffer's insert and the listeners then work on contiguous arrays.
        readings=pa.concat_tables([b.readings for b in batches]).combine_chunks(),
        quarantine=pa.concat_tables([b.quarantine for b in batches]),
        messages=[m for b in batches for m in b.messages],
        duplicates=sum(b.duplicates for b in batches),
        empty=sum(b.empty for b in batches),
        retained=retained,
        identities=[i for b in batches for i in b.identities],
        reading_identities=[i for b in batches for i in b.reading_identities],
        quarantine_identities=[i for b in batches for i in b.quarantine_identities],
        devices=joined_devices([b.devices for b in batches]),
    )
    return _Decoded(
        messages=[m for p in parts for m in p.messages],
        batch=batch,
        inflight=[e for p in parts for e in p.inflight],
        number=parts[-1].number,
    )


class Wakeup:
    """How the ingest tells the pipeline that messages arrived: give `on_received` to the
    ingest, which calls it on the event loop after each read of the socket that received some.
    The pipeline takes and decodes them right there, so a rule's command is written before the
    read's callback returns, and its loop wakes for the rest (the commit, the flush timer)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_arrival: Callable[[], None] | None = None

    def on_received(self) -> None:
        """Messages arrived (the ingest's read callback, on the event loop)."""
        if self._on_arrival is not None:
            self._on_arrival()
        self._event.set()

    def set(self) -> None:
        """Wake from the event loop itself (a commit done, stop)."""
        self._event.set()

    def bind(self, on_arrival: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_arrival = on_arrival

    def unbind(self) -> None:
        self._on_arrival = None

    def arm(self) -> None:
        """Want the next wake-up: then check for work once more, then `sleep`."""
        self._event.clear()

    async def sleep(self, seconds: float) -> None:
        """Until woken, or `seconds` passed (a timer, not `wait_for`: no task per sleep)."""
        assert self._loop is not None
        timer = self._loop.call_later(seconds, self._event.set)
        await self._event.wait()
        timer.cancel()


class Pipeline:
    """`await pipeline.run(stop)`: moves messages from the source to the buffer until `stop`,
    then commits what it has taken and what is pending, and returns."""

    def __init__(
        self,
        *,
        source: MessageSource,
        redelivery: Redeliveries,
        decoder: Decoder,
        writer: BatchWriter,
        on_writer: OnWriter,
        config: BufferConfig,
        stats: IngestStats,
        wakeup: Wakeup,
        rules: Evaluates | None = None,
        listeners: Sequence[BatchListener] = (),
        writer_waits: Callable[[], None] = lambda: None,
    ) -> None:
        """`writer_waits` is called while a failed commit waits to be retried (liveness)."""
        self._source = source
        self._redelivery = redelivery
        self._decoder = decoder
        self._writer = writer
        self._on_writer = on_writer
        self._config = config
        self._stats = stats
        self._rules = rules
        self._listeners = listeners  # the caller's: listeners added later are called too
        self._writer_waits = writer_waits
        self._wakeup = wakeup
        self._waiting: list[_Decoded] = []
        self._waiting_messages = 0
        self._waiting_bytes = 0
        self._waiting_since = 0.0  # monotonic time the oldest waiting batch was taken
        self._commit: asyncio.Task[None] | None = None
        self._stopping = False
        self._failure: BaseException | None = None  # raised in the arrival callback

    # -- event loop -------------------------------------------------------------------------
    def settled(self) -> bool:
        """Everything taken is committed (and acked): nothing waits and no commit is running."""
        return not self._waiting and self._commit is None and self._source.pending() == 0

    async def run(self, stop: asyncio.Event) -> None:
        wakeup = self._wakeup
        wakeup.bind(self._on_arrival)
        watch = asyncio.ensure_future(stop.wait())
        watch.add_done_callback(lambda _: wakeup.set())
        try:
            while True:
                self._raise_if_failed()
                if stop.is_set() and not self._stopping:
                    self._stopping = True
                    # Stop receiving first; what already arrived is committed below. Messages
                    # committed after the disconnect stay unacked: the broker redelivers them
                    # as DUPs and the redelivery filter recognises them.
                    self._source.stop()
                self._take()
                if self._stopping and self._commit is None and not self._waiting:
                    if self._source.pending() == 0:
                        return
                    continue
                wakeup.arm()
                if self._ready_to_take():
                    continue  # it arrived while arming
                if self._commit is not None and self._commit.done():
                    continue
                if stop.is_set() and not self._stopping:
                    continue
                await wakeup.sleep(self._until_due())
        finally:
            wakeup.unbind()
            watch.cancel()
            if self._commit is not None:
                await asyncio.gather(self._commit, return_exceptions=True)

    def _on_arrival(self) -> None:
        """In the ingest's read callback: take and decode now. A failure here is a bug: the
        pipeline's loop raises it (it stops the gateway, loudly)."""
        if self._failure is not None:
            return
        try:
            self._take()
        except BaseException as exc:
            self._failure = exc

    def _take(self) -> None:
        if self._ready_to_take():
            budget = self._config.max_batch_bytes - self._waiting_bytes
            messages = self._source.take(self._room(), budget)
            if messages:
                self._decode(messages)
        self._commit_if_due(self._stopping)

    def _ready_to_take(self) -> bool:
        """Whether to take what is pending: whenever messages arrive or the loop comes round,
        and the waiting batch has room. A reading waits for no other (a rule's command leaves
        at once); under load, each read of the socket brings more, so what is taken grows with
        the rate by itself.
        (Waiting up to 5 ms for a chunk of 500 cost the rules' p50 6 ms at 1,000 msg/s, and
        saved 7% of the CPU at 10,000 msg/s; docs/benchmarks.md, "Rules".)"""
        return self._room() > 0 and self._source.pending() > 0

    def _room(self) -> int:
        """How many more messages the waiting batch may take."""
        if self._waiting_bytes >= self._config.max_batch_bytes:
            return 0
        return max(0, self._config.max_batch - self._waiting_messages)

    def _decode(self, messages: list[RawMessage]) -> None:
        # The rules see the readings before the commit (a committed reading was evaluated), and
        # before their Arrow table is built: a command leaves without waiting for either.
        rules = self._rules
        batch = self._decoder.decode(messages, rules.evaluate if rules is not None else None)
        inflight, number = self._redelivery.remember(batch.messages)
        batch.number = number
        decoded = _Decoded(messages, batch, inflight, number)
        if not self._waiting:
            self._waiting_since = time.monotonic()
        self._waiting.append(decoded)
        self._waiting_messages += len(messages)
        self._waiting_bytes += decoded.payload_bytes

    def _until_due(self) -> float:
        """How long to sleep: until the waiting batch is due (new messages wake the loop)."""
        now = time.monotonic()
        seconds = 1.0
        if self._waiting and self._commit is None:
            seconds = self._config.flush_interval - (now - self._waiting_since)
        return max(0.0, seconds)

    def _commit_if_due(self, stopping: bool) -> None:
        if self._commit is not None or not self._waiting:
            return
        due = (
            stopping
            or self._room() == 0
            or time.monotonic() - self._waiting_since >= self._config.flush_interval
        )
        if not due:
            return
        decoded = merge(self._waiting)
        self._waiting, self._waiting_messages, self._waiting_bytes = [], 0, 0
        self._commit = asyncio.ensure_future(self._commit_one(decoded))
        self._commit.add_done_callback(lambda _: self._wakeup.set())

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure
        commit = self._commit
        if commit is not None and commit.done():
            self._commit = None
            commit.result()  # a failure here is a bug: it stops the gateway, loudly

    async def _commit_one(self, decoded: _Decoded) -> None:
        batch = decoded.batch
        self._redelivery.confirm(self._source.acks_confirmed())
        committed = await self._on_writer(
            self._append, batch, decoded.inflight, self._redelivery.confirmed_upto
        )
        self._source.ack(decoded.messages, decoded.number)
        self._decoder.committed(batch)
        redeliveries = len(decoded.messages) - len(batch.messages)
        self._stats.record(time.time(), len(decoded.messages), committed, redeliveries, batch.empty)
        if committed.readings.num_rows:
            for listener in self._listeners:
                await listener(committed.readings)

    def _append(
        self, batch: IngestBatch, inflight: list[InflightEntry], forget_upto: int
    ) -> Committed:
        """On the writer thread: commit, retrying while the disk refuses. The broker keeps the
        messages unacked meanwhile, so nothing is lost."""
        delay = 0.1
        while True:
            try:
                return self._writer.append(batch, inflight, forget_upto)
            except BufferStoreError as exc:
                self._stats.commit_failures += 1
                logger.error("%s; retrying in %.1fs (messages stay unacked)", exc, delay)
                self._writer_waits()  # waiting on the disk, not stuck
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
