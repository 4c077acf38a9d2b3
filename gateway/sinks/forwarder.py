"""The forwarder: one loop per sink and stream that reads batches after the sink's cursor, sends
them, and advances the cursor only after the sink confirmed.

Order of a batch, written down so a crash anywhere repeats at most the send, never skips it:

1. read rows `first..last` after the cursor (a reader cursor, off the writer thread);
2. let the sink note what it needs before a first send (`Sink.marks`: Kafka's end offsets),
   retried like a send while the sink is unreachable; while a backlog drains, the read-ahead
   thread reads the next batch, lets the sink encode it (`Sink.prepare`) and takes its marks
   while the batch before is still being sent, so no round trip upstream lies between sends;
3. record the attempt (`first`, `last`, first-try time, the sink's marks) in `state` (writer
   thread);
4. send; the sink returns once the rows are confirmed upstream;
5. in one transaction: append dead letters, move the cursor to `last`, drop the attempt.

On start a recorded attempt past the cursor is sent again with `resumed=True`, the same range
and marks, so the sink's own idempotence (deterministic file names, read-back of event ids from
the recorded offsets) applies. A sink that asks to be retried later (`SinkBackpressureError`)
gets the same attempt again after the time it asked for: no failure, no backoff.

The forwarder calls every member of the sink contract on `self.sink` as it is at that moment:
the gateway replaces it with telemetry's timing wrapper after construction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from gateway.buffer import outbox
from gateway.errors import BufferStoreError, SinkBackpressureError, SinkError, SinkRejectedError
from gateway.sinks.base import Attempt, BasicSink, Rejection, Sink, WriteResult, as_sink
from gateway.sinks.config import BatchingConfig, RetryConfig
from gateway.sinks.records import iso_times

logger = logging.getLogger(__name__)

# Jitter from a generator of its own: drawing from the global `random` would move the state that
# the code around the gateway (a seeded simulation, a property-based test) relies on.
_JITTER = random.Random()

T = TypeVar("T")
OnWriter = Callable[..., Awaitable[Any]]
POLL_INTERVAL = 0.05
# The buffer is local: while it fails (disk full, until the writer reopens it) retry as the
# writer's own commits do, not at the sink's pace.
BUFFER_RETRY = RetryConfig(min_delay=0.1, max_delay=5.0)
# A failing buffer: DuckDB's own errors, or the store's when it cannot reopen the file.
BUFFER_ERRORS = (duckdb.Error, BufferStoreError)


class SinkBuffer(Protocol):
    """What the forwarder needs from the buffer: cursors for reads on any thread, writes in one
    transaction on the writer thread (called through `on_writer`), and the buffer's own id,
    which sinks put into what they name by position (positions restart in every buffer)."""

    @property
    def buffer_uid(self) -> str: ...

    def reading(self) -> contextlib.AbstractContextManager[duckdb.DuckDBPyConnection]: ...

    def write(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T: ...


@dataclass
class ForwarderStats:
    """Figures for `edge-gateway sinks` and the API."""

    sink: str
    stream: str
    position: int = 0
    sent_rows: int = 0
    sent_batches: int = 0
    sent_bytes: int = 0
    dead_letters: int = 0
    failures: int = 0
    backpressure: int = 0  # tries the sink asked to repeat later (not failures)
    last_error: str | None = None
    last_error_at: float | None = None
    last_sent_at: float | None = None
    recent: list[tuple[float, int]] = field(default_factory=list)

    def record(self, now: float, rows: int, nbytes: int) -> None:
        self.sent_rows += rows
        self.sent_batches += 1
        self.sent_bytes += nbytes
        self.last_sent_at = now
        self.recent.append((now, rows))
        while self.recent and self.recent[0][0] < now - 60.0:
            self.recent.pop(0)

    def rows_per_second(self, now: float) -> float:
        window = [n for t, n in self.recent if t >= now - 10.0]
        return sum(window) / 10.0


def backoff_delay(failures: int, retry: RetryConfig) -> float:
    """Capped exponential backoff with full jitter (AWS architecture blog's 'full jitter')."""
    ceiling = min(retry.max_delay, retry.min_delay * 2 ** min(failures - 1, 30))
    return _JITTER.uniform(retry.min_delay / 2, max(ceiling, retry.min_delay / 2))


class Forwarder:
    """Ships one stream of the buffer to one sink; `run(stop)` until stop is set."""

    def __init__(
        self,
        sink: BasicSink,
        stream: str,
        store: SinkBuffer,
        on_writer: OnWriter,
        *,
        batching: BatchingConfig,
        retry: RetryConfig,
        max_bytes_per_s: int | None = None,
        head: Callable[[], int] | None = None,
        wake: asyncio.Event | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sink: Sink = as_sink(sink)
        self.clock = clock  # wall clock: an attempt's first-try time
        self.stream = stream
        self.store = store
        self.on_writer = on_writer
        self.batching = batching
        self.retry = retry
        self.max_bytes_per_s = max_bytes_per_s
        self._head = head
        self.stats = ForwarderStats(sink=sink.name, stream=stream)
        self._next_send_at = 0.0  # bandwidth cap: monotonic time the next batch may leave
        self._prefetch: asyncio.Future[_ReadAhead] | None = None
        self.wake = wake or asyncio.Event()
        self.started = asyncio.Event()
        self._read_failures = 0  # buffer reads failed in a row
        self._waited = False  # the sink asked to be retried later since the last delivery

    @property
    def position(self) -> int:
        return self.stats.position

    # -- buffer access ----------------------------------------------------------------------
    def head(self) -> int:
        if self._head is not None:
            return self._head()

        return self._read_now(lambda con: outbox.head(con, self.stream))

    def _read_now(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        with self.store.reading() as con:
            return fn(con)

    async def _reading(
        self, stop: asyncio.Event, fn: Callable[[duckdb.DuckDBPyConnection], T]
    ) -> T | None:
        """`fn(cursor)` in a thread, retried on a fresh cursor while the buffer fails (between a
        fatal error and the writer's reopen); None once stopped."""
        while not stop.is_set():
            try:
                result = await asyncio.to_thread(self._read_now, fn)
            except BUFFER_ERRORS as exc:
                await self._read_failed(exc, stop)
                continue
            self._read_ok()
            return result
        return None

    async def _read(
        self, stop: asyncio.Event, after: int, upto: int | None, limit: int
    ) -> pa.Table | None:
        return await self._reading(
            stop, lambda con: outbox.rows_after(con, self.stream, after, upto, limit)
        )

    async def _read_failed(self, exc: Exception, stop: asyncio.Event) -> None:
        self._read_failures += 1
        self._failed(SinkError(self.sink.name, f"cannot read the buffer: {exc}"))
        delay = backoff_delay(self._read_failures, BUFFER_RETRY)
        logger.warning(
            "sink %s: cannot read the buffer (%s); retry %d in %.1fs",
            self.sink.name,
            exc,
            self._read_failures,
            delay,
            extra={"sink": self.sink.name},
        )
        await self._idle(stop, delay)

    def _read_ok(self) -> None:
        if self._read_failures:
            self._read_failures = 0
            logger.info("sink %s: reading the buffer again", self.sink.name)

    async def _write(self, fn: Callable[[duckdb.DuckDBPyConnection], None]) -> None:
        """Run one buffer write transaction on the gateway's writer thread."""
        await self.on_writer(self.store.write, fn)

    async def _record_attempt(self, attempt: Attempt) -> None:
        recorded = {
            "first": attempt.first,
            "last": attempt.last,
            "since_ms": attempt.since_ms,
            "marks": dict(attempt.marks or {}),
        }
        sink, stream = self.sink.name, self.stream
        await self._write(lambda con: outbox.record_attempt(con, sink, stream, recorded))

    async def _confirm(self, batch: pa.Table, last: int, rejected: list[Rejection]) -> None:
        sink, stream = self.sink.name, self.stream
        dead = dead_letter_rows(sink, stream, batch, rejected) if rejected else None

        def write(con: duckdb.DuckDBPyConnection) -> None:
            outbox.confirm(con, sink, stream, last, dead)

        await self._write(write)
        self.stats.position = last
        if rejected:
            self.stats.dead_letters += len(rejected)
            for item in rejected[:5]:
                logger.warning(
                    "sink %s: %s row %d rejected for good (dead-lettered): %s",
                    sink,
                    stream,
                    item.position,
                    item.reason,
                )

    # -- the loop ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._run(stop)
        finally:
            self._drop_prefetch()

    async def _run(self, stop: asyncio.Event) -> None:
        sink, stream = self.sink.name, self.stream
        loaded = await self._reading(
            stop,
            lambda con: (
                outbox.load_cursor(con, sink, stream),
                outbox.load_attempt(con, sink, stream),
            ),
        )
        if loaded is None:
            return
        self.stats.position, pending = loaded
        self.started.set()
        if pending and int(pending["last"]) > self.stats.position:
            first, last = max(int(pending["first"]), self.stats.position + 1), int(pending["last"])
            logger.info(
                "sink %s: resending %s %d..%d, which was in flight when the gateway stopped",
                self.sink.name,
                self.stream,
                first,
                last,
            )
            batch = await self._read(stop, first - 1, last, last - first + 1)
            if batch is None:
                return
            if batch.num_rows:
                marks = pending.get("marks")  # absent: recorded by a version without marks
                attempt = Attempt(
                    self.stream, first, last, int(pending["since_ms"]), resumed=True, marks=marks
                )
                if not await self._deliver(batch, attempt, stop):
                    return
            else:
                await self._confirm(batch, last, [])
        waiting_since: float | None = None
        while not stop.is_set():
            try:
                head = self.head()
            except BUFFER_ERRORS as exc:
                await self._read_failed(exc, stop)
                continue
            available = head - self.stats.position
            if available <= 0:
                waiting_since = None
                await self._idle(stop, POLL_INTERVAL)
                continue
            now = time.monotonic()
            if waiting_since is None:
                waiting_since = now
            if available < self.batching.max_rows and now - waiting_since < self.batching.max_age:
                await self._idle(stop, min(POLL_INTERVAL, self.batching.max_age))
                continue
            ahead = await self._next_batch(stop)
            if ahead is None:
                break
            batch, marked = ahead.batch, ahead.marked
            if batch.num_rows == 0:  # purged under us (retention on_full: drop_oldest)
                self.stats.position = head  # not a later head: rows may have come since
                continue
            waiting_since = None
            first, last = _bounds(batch)
            with contextlib.suppress(*BUFFER_ERRORS):  # only a read-ahead; the next read retries
                if self.head() - last >= self.batching.max_rows:
                    self._start_prefetch(last)  # draining a backlog: read on while this sends
            if marked is None:
                marked = await self._mark(
                    batch, Attempt(self.stream, first, last, int(self.clock() * 1000)), stop
                )
                if marked is None:
                    return
            attempt = marked
            try:
                await self._record_attempt(attempt)
            except BUFFER_ERRORS as exc:  # without the record a crash could resend other rows
                logger.error(
                    "sink %s: cannot record the attempt (%s); retrying", self.sink.name, exc
                )
                self._drop_prefetch()
                await self._idle(stop, backoff_delay(1, self.retry))
                continue
            if not await self._deliver(batch, attempt, stop):
                return
        self._drop_prefetch()

    async def _next_batch(self, stop: asyncio.Event) -> _ReadAhead | None:
        """The rows after the cursor: the prefetched batch when it starts there, else read;
        None once stopped."""
        task, self._prefetch = self._prefetch, None
        if task is not None:
            with contextlib.suppress(*BUFFER_ERRORS):  # the read-ahead failed: read afresh below
                ahead = await task
                if ahead.after == self.stats.position:
                    return ahead
        table = await self._read(stop, self.stats.position, None, self.batching.max_rows)
        return None if table is None else _ReadAhead(self.stats.position, self._cap_bytes(table))

    def _start_prefetch(self, after: int) -> None:
        """Read the next full batch in a thread, let the sink encode it and take its marks,
        overlapping the send of the current one. Nothing is sent or recorded, so a stop or a
        crash loses nothing; marks taken now hold for the later first send (Sink.marks)."""
        prepare = self.sink.prepare

        def read(con: duckdb.DuckDBPyConnection) -> pa.Table:
            return outbox.rows_after(con, self.stream, after, None, self.batching.max_rows)

        def fetch() -> _ReadAhead:
            table = self._cap_bytes(self._read_now(read))
            if not table.num_rows:
                return _ReadAhead(after, table)
            prepare(self.stream, table)
            first, last = _bounds(table)
            attempt = Attempt(self.stream, first, last, int(self.clock() * 1000))
            try:
                marks = self.sink.marks(table, attempt)
            except Exception as exc:  # only a head start: the loop takes them, with retries
                logger.debug("sink %s: marks ahead failed: %s", self.sink.name, exc)
                return _ReadAhead(after, table)
            return _ReadAhead(after, table, replace(attempt, marks=marks))

        self._drop_prefetch()
        self._prefetch = asyncio.ensure_future(asyncio.to_thread(fetch))

    def _drop_prefetch(self) -> None:
        task, self._prefetch = self._prefetch, None
        if task is not None:
            task.cancel()

    def _cap_bytes(self, batch: pa.Table) -> pa.Table:
        nbytes = batch.nbytes
        if nbytes <= self.batching.max_bytes or batch.num_rows == 1:
            return batch
        rows = max(1, int(batch.num_rows * self.batching.max_bytes / nbytes))
        return batch.slice(0, rows)

    async def _idle(self, stop: asyncio.Event, seconds: float) -> None:
        """Wait `seconds`, less when stopped or woken (new rows in the buffer)."""
        self.wake.clear()
        stopped = asyncio.ensure_future(stop.wait())
        woken = asyncio.ensure_future(self.wake.wait())
        try:
            await asyncio.wait({stopped, woken}, timeout=seconds, return_when="FIRST_COMPLETED")
        finally:
            stopped.cancel()
            woken.cancel()

    async def _pause(self, stop: asyncio.Event, seconds: float) -> None:
        """Wait `seconds`, less only when stopped: new rows must not cut short a wait the sink
        asked for."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    async def _mark(self, batch: pa.Table, attempt: Attempt, stop: asyncio.Event) -> Attempt | None:
        """The attempt with the sink's marks, retried while the sink cannot take them; None once
        stopped. Nothing is sent before, so a failure here leaves the attempt a first try."""
        failures = 0
        while not stop.is_set():
            await self._throttle(stop)
            try:
                marks = await asyncio.to_thread(self.sink.marks, batch, attempt)
            except Exception as exc:  # a sink bug must not stop ingest or the other sinks
                failures = await self._wait_after(exc, failures, stop)
                continue
            return replace(attempt, marks=marks)
        return None

    async def _deliver(self, batch: pa.Table, attempt: Attempt, stop: asyncio.Event) -> bool:
        """Send until confirmed (True) or stopped (False); split on a permanent rejection."""
        failures = 0
        resumed = attempt.resumed
        while True:
            if stop.is_set():
                return False
            await self._throttle(stop)
            try:
                result = await self.sink.write_batch(batch, replace(attempt, resumed=resumed))
            except SinkRejectedError as exc:
                return await self._split(batch, replace(attempt, resumed=resumed), exc, stop)
            except Exception as exc:  # a sink bug must not stop ingest or the other sinks
                failures = await self._wait_after(exc, failures, stop)
                resumed = True  # part of the batch may have arrived before the error
                continue
            try:
                await self._confirm(batch, attempt.last, result.rejected)
            except BUFFER_ERRORS as exc:  # the buffer refused the write (disk full, say)
                failures += 1
                self._failed(SinkError(self.sink.name, f"cannot move the cursor: {exc}"))
                logger.error(
                    "sink %s: cannot move the cursor (%s); sending again", self.sink.name, exc
                )
                await self._idle(stop, backoff_delay(failures, self.retry))
                resumed = True  # delivered already: the resend is recognised upstream
                continue
            self._sent(batch.num_rows - len(result.rejected), result)
            if failures or self._waited:
                logger.info("sink %s: delivering %s again", self.sink.name, self.stream)
                self._waited = False
            return True

    async def _wait_after(self, exc: Exception, failures: int, stop: asyncio.Event) -> int:
        """Wait before the next try after `exc`, a sink call's error; returns the failures in a
        row so far. Backpressure waits what the sink asked for and is no failure; any other
        error is counted, logged, and backed off from (capped exponential, full jitter)."""
        if isinstance(exc, SinkBackpressureError):
            self.stats.backpressure += 1
            # Once per episode at info: a slow upstream asks again every few seconds.
            level = logging.DEBUG if self._waited else logging.INFO
            self._waited = True
            logger.log(
                level,
                "%s; trying again in %.1fs",
                exc,
                exc.retry_after,
                extra={"sink": self.sink.name},
            )
            await self._pause(stop, exc.retry_after)
            return failures
        failures += 1
        delay = backoff_delay(failures, self.retry)
        if isinstance(exc, SinkError):
            self._failed(exc)
            logger.warning(
                "%s; retry %d in %.1fs", exc, failures, delay, extra={"sink": self.sink.name}
            )
        else:
            self._failed(SinkError(self.sink.name, f"unexpected error: {exc!r}"))
            logger.error("sink %s: unexpected error", self.sink.name, exc_info=exc)
        await self._idle(stop, delay)
        return failures

    async def _split(
        self, batch: pa.Table, attempt: Attempt, exc: SinkRejectedError, stop: asyncio.Event
    ) -> bool:
        """A record in the batch is refused for good: halve until it is alone, dead-letter it."""
        if batch.num_rows == 1:
            rejected = [Rejection(attempt.first, str(exc))]
            await self._confirm(batch, attempt.last, rejected)
            return True
        half = batch.num_rows // 2
        for part in (batch.slice(0, half), batch.slice(half)):
            first, last = _bounds(part)
            # The first try's time and marks hold for every part: each was in that first try.
            sub = replace(attempt, first=first, last=last)
            await self._record_attempt(sub)
            if not await self._deliver(part, sub, stop):
                return False
        return True

    async def _throttle(self, stop: asyncio.Event) -> None:
        wait = self._next_send_at - time.monotonic()
        if wait > 0:
            await self._idle(stop, wait)

    def _sent(self, rows: int, result: WriteResult) -> None:
        now = time.time()
        self.stats.record(now, rows, result.bytes_sent)
        if self.max_bytes_per_s:
            start = max(self._next_send_at, time.monotonic())
            self._next_send_at = start + result.bytes_sent / self.max_bytes_per_s

    def _failed(self, exc: SinkError) -> None:
        self.stats.failures += 1
        self.stats.last_error = str(exc)
        self.stats.last_error_at = time.time()


@dataclass(frozen=True)
class _ReadAhead:
    """A batch read after position `after`; with its first attempt, marked, when the read-ahead
    took the sink's marks."""

    after: int
    batch: pa.Table
    marked: Attempt | None = None


def _bounds(batch: pa.Table) -> tuple[int, int]:
    ids = batch.column("id")
    return int(ids[0].as_py()), int(ids[-1].as_py())


def dead_letter_rows(
    sink: str, stream: str, batch: pa.Table, rejected: list[Rejection]
) -> pa.Table:
    """Dead-letter rows for the rejected positions, each with the full record as JSON (times as
    ISO 8601 text: the batch may hold years past 9999, which no Python datetime holds)."""
    by_position = {r.position: r.reason for r in rejected}
    wanted = pc.is_in(batch.column("id"), pa.array(list(by_position), pa.int64()))
    rows = iso_times(batch.filter(wanted)).to_pylist()
    now = int(time.time() * 1e6)
    return pa.table(
        {
            "sink": pa.array([sink] * len(rows), pa.string()),
            "stream": pa.array([stream] * len(rows), pa.string()),
            "position": pa.array([r["id"] for r in rows], pa.int64()),
            "event_id": pa.array([r["event_id"] for r in rows], pa.string()),
            "rejected_at": pa.array([now] * len(rows), pa.int64()).cast(
                pa.timestamp("us", tz="UTC")
            ),
            "reason": pa.array([by_position[r["id"]] for r in rows], pa.string()),
            "record": pa.array([json.dumps(r, default=str) for r in rows], pa.string()),
        }
    )
