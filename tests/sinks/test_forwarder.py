"""The forwarder on its own (an in-memory sink): batching, retries, backpressure, splitting
around a record refused for good, and what retention may purge."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable

import pyarrow as pa
from sinkhelpers import RecordingSink, WriterThread, fill, readings, run_until

from gateway.buffer.outbox import rows_after
from gateway.buffer.store import BufferStore
from gateway.errors import SinkBackpressureError
from gateway.sinks.base import Attempt, WriteResult
from gateway.sinks.config import BatchingConfig, RetryConfig
from gateway.sinks.forwarder import Forwarder, backoff_delay
from gateway.sinks.shipping import Shipping

FAST_RETRY = RetryConfig(min_delay=0.01, max_delay=0.05)


def forwarder(
    store: BufferStore, on_writer: WriterThread, sink: RecordingSink, **batching: object
) -> Forwarder:
    return Forwarder(
        sink,
        "readings",
        store,
        on_writer,
        batching=BatchingConfig.model_validate({"max_rows": 1000, "max_age": 0.05, **batching}),
        retry=FAST_RETRY,
        head=lambda: store.next_reading_id - 1,
    )


def test_full_batches_by_count_then_the_rest_by_age(
    store: BufferStore, on_writer: WriterThread
) -> None:
    fill(store, readings(2500))
    sink = RecordingSink()
    f = forwarder(store, on_writer, sink)
    run_until(f, lambda: f.position == 2500)
    assert sink.batches == [(1, 1000, 1000), (1001, 2000, 1000), (2001, 2500, 500)]
    assert store.get_cursor("memory") == 2500


def test_a_batch_stops_at_max_bytes(store: BufferStore, on_writer: WriterThread) -> None:
    fill(store, readings(1000))
    sink = RecordingSink()
    row_bytes = readings(1000).nbytes / 1000
    f = forwarder(store, on_writer, sink, max_bytes=int(row_bytes * 300))
    run_until(f, lambda: f.position == 1000)
    assert max(rows for _, _, rows in sink.batches) < 1000
    assert sink.positions == list(range(1, 1001))


def test_failed_sends_are_retried_with_the_same_range_marked_resumed(
    store: BufferStore, on_writer: WriterThread
) -> None:
    fill(store, readings(500))
    sink = RecordingSink()
    sink.fail_next = 3
    f = forwarder(store, on_writer, sink)
    run_until(f, lambda: f.position == 500)
    assert sink.batches == [(1, 500, 500)]
    assert [(a.first, a.last, a.resumed) for a in sink.attempts] == [
        (1, 500, False),
        (1, 500, True),
        (1, 500, True),
        (1, 500, True),
    ]
    assert f.stats.failures == 3 and f.stats.last_error is not None
    assert "upstream unreachable" in f.stats.last_error


def test_a_record_refused_for_good_is_isolated_and_dead_lettered(
    store: BufferStore, on_writer: WriterThread
) -> None:
    fill(store, readings(1000))
    sink = RecordingSink()
    sink.refuse = {377}
    f = forwarder(store, on_writer, sink)
    run_until(f, lambda: f.position == 1000)
    assert sink.positions == [p for p in range(1, 1001) if p != 377]
    dead = store.query("SELECT sink, position, reason FROM dead_letters").to_pylist()
    assert dead == [{"sink": "memory", "position": 377, "reason": "sink 'memory': schema mismatch"}]


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    retry = RetryConfig(min_delay=0.5, max_delay=8.0)
    for failures in range(1, 12):
        delays = [backoff_delay(failures, retry) for _ in range(200)]
        ceiling = min(8.0, 0.5 * 2 ** (failures - 1))
        assert all(0.25 <= d <= max(ceiling, 0.25) for d in delays)
    assert len({round(backoff_delay(6, retry), 3) for _ in range(50)}) > 10  # jittered


def test_retention_keeps_what_the_slowest_sink_has_not_confirmed(
    store: BufferStore, on_writer: WriterThread
) -> None:
    """One sink is down after 400 of 1,000 readings: age-based retention purges only those 400."""
    fill(store, readings(1000))
    fast, slow = RecordingSink("fast"), RecordingSink("slow")
    slow.down_after = 400
    shipping = Shipping([], "gw1", store, on_writer)
    shipping.forwarders = [
        forwarder(store, on_writer, fast),
        forwarder(store, on_writer, slow, max_rows=400),
    ]
    assert shipping.protected_position() == 0  # cursors not loaded yet: protect everything

    async def ship() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(shipping.run(stop))
        deadline = time.monotonic() + 20
        while not (
            shipping.forwarders[0].position == 1000 and any(a.resumed for a in slow.attempts)
        ):
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.01)
        stop.set()
        await task

    asyncio.run(ship())
    assert shipping.protected_position() == 400
    result = store.purge(
        now=time.time() + 10 * 86400,  # every reading is past max_age
        max_age=86400,
        max_bytes=1 << 40,
        protected_after=shipping.protected_position(),
        drop_unsent=False,
    )
    assert result.readings == 400 and result.unsent == 0
    left = store.query("SELECT min(id) AS lo, count(*) AS n FROM readings")
    assert left.to_pylist() == [{"lo": 401, "n": 600}]


def test_a_bandwidth_cap_spaces_the_batches(store: BufferStore, on_writer: WriterThread) -> None:
    fill(store, readings(2000))
    sink = RecordingSink()
    with store.reading() as con:
        batch_bytes = rows_after(con, "readings", 0, None, 200).nbytes
    cap = batch_bytes * 8  # bytes per second: ten batches need at least 9/8 s
    f = Forwarder(
        sink,
        "readings",
        store,
        on_writer,
        batching=BatchingConfig(max_rows=200, max_age=0.01),
        retry=FAST_RETRY,
        max_bytes_per_s=cap,
        head=lambda: store.next_reading_id - 1,
    )
    started = time.monotonic()
    run_until(f, lambda: f.position == 2000)
    elapsed = time.monotonic() - started
    assert len(sink.batches) == 10
    assert f.stats.sent_bytes / elapsed <= cap * 10 / 9 * 1.01  # never faster than the cap


class GatedSink(RecordingSink):
    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None
        self.waiting = False

    async def write_batch(self, batch: pa.Table, attempt: Attempt) -> WriteResult:
        assert self.gate is not None
        self.waiting = True
        await self.gate.wait()
        self.waiting = False
        return await super().write_batch(batch, attempt)


def test_a_forwarder_carries_on_across_a_recycle_of_the_database(
    store: BufferStore, on_writer: WriterThread
) -> None:
    """The database is closed and reopened while a batch is on its way; delivery carries on
    from the same position, and no read ever meets a closed cursor."""
    sink = GatedSink()
    fill(store, readings(300))
    f = Forwarder(
        sink,
        "readings",
        store,
        on_writer,
        batching=BatchingConfig(max_rows=1000, max_age=0.01),
        retry=FAST_RETRY,
        head=lambda: store.next_reading_id - 1,
    )

    async def main() -> None:
        stop = asyncio.Event()
        sink.gate = asyncio.Event()
        task = asyncio.create_task(f.run(stop))

        async def until(condition: Callable[[], bool]) -> None:
            deadline = time.monotonic() + 20
            while not condition():
                if task.done():
                    task.result()  # the forwarder died: show why
                assert time.monotonic() < deadline, f"timed out; stats {f.stats}"
                await asyncio.sleep(0.01)

        try:
            sink.gate.set()
            await until(lambda: f.position == 300)
            sink.gate.clear()
            await on_writer(fill, store, readings(300, start=300))
            await until(lambda: sink.waiting)  # 301..600 in flight, no cursor in use
            assert await on_writer(store.recycle)
            await on_writer(fill, store, readings(300, start=600))
            sink.gate.set()
            await until(lambda: f.position == 900)
        finally:
            stop.set()
            await task

    asyncio.run(main())
    assert sorted(set(sink.positions)) == list(range(1, 901))
    fresh = [p for a in sink.attempts if not a.resumed for p in range(a.first, a.last + 1)]
    assert fresh == list(range(1, 901))  # nothing skipped, nothing sent twice as new
    assert store.get_cursor("memory") == 900
    assert store.recycles == 1
    assert f.stats.failures == 0


class BusySink(RecordingSink):
    """Asks to be tried again later (backpressure) for its first `busy` tries."""

    def __init__(self, busy: int, retry_after: float) -> None:
        super().__init__()
        self.busy = busy
        self.retry_after = retry_after
        self.tried_at: list[float] = []

    async def write_batch(self, batch: pa.Table, attempt: Attempt) -> WriteResult:
        self.tried_at.append(time.monotonic())
        if self.busy:
            self.busy -= 1
            self.attempts.append(attempt)
            raise SinkBackpressureError(self.name, "upstream busy", retry_after=self.retry_after)
        return await super().write_batch(batch, attempt)


def test_backpressure_waits_as_asked_then_sends_the_same_attempt_and_is_no_failure(
    store: BufferStore, on_writer: WriterThread
) -> None:
    """Three tries are pushed back for 0.3 s each while new rows keep waking the forwarder: it
    waits the time asked for each (not the backoff, not until the next commit), then delivers
    the same attempt once; no failure counted, nothing dead-lettered."""
    fill(store, readings(500))
    sink = BusySink(busy=3, retry_after=0.3)
    f = forwarder(store, on_writer, sink)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(f.run(stop))
        deadline = time.monotonic() + 20
        try:
            while f.position < 500:
                if task.done():
                    task.result()
                assert time.monotonic() < deadline, f"timed out; stats {f.stats}"
                f.wake.set()  # as every commit of new readings does
                await asyncio.sleep(0.01)
        finally:
            stop.set()
            await task

    asyncio.run(main())
    assert sink.batches == [(1, 500, 500)]
    assert {(a.first, a.last, a.since_ms, json.dumps(a.marks)) for a in sink.attempts} == {
        (1, 500, sink.attempts[0].since_ms, "{}")
    }
    waits = [later - earlier for earlier, later in itertools.pairwise(sink.tried_at)]
    assert len(waits) == 3 and min(waits) >= 0.29, waits
    assert f.stats.backpressure == 3
    assert f.stats.failures == 0 and f.stats.last_error is None
    assert store.query("SELECT count(*) AS n FROM dead_letters").to_pylist() == [{"n": 0}]


class MarkedAheadSink(RecordingSink):
    """Each send waits (up to a second) for the next batch's marks: taken ahead, they come
    while this send is still out."""

    def __init__(self) -> None:
        super().__init__()
        self.marked: list[tuple[int, int]] = []
        self.during_send: list[bool] = []  # per send but the last: the next one's marks came

    def marks(self, batch: pa.Table, attempt: Attempt) -> dict[str, object]:
        self.marked.append((attempt.first, attempt.last))
        return {"taken_at": time.monotonic()}

    async def write_batch(self, batch: pa.Table, attempt: Attempt) -> WriteResult:
        if attempt.last < 3000:
            deadline = time.monotonic() + 1.0
            while (attempt.last + 1, attempt.last + 1000) not in self.marked:
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.005)
            self.during_send.append((attempt.last + 1, attempt.last + 1000) in self.marked)
        return await super().write_batch(batch, attempt)


def test_the_next_batchs_marks_are_taken_while_the_batch_before_is_sent(
    store: BufferStore, on_writer: WriterThread
) -> None:
    """Draining a backlog, no round trip to the upstream lies between two sends: the marks of
    the next batch (Kafka's end offsets) come with its read-ahead, and its attempt is recorded
    with them."""
    fill(store, readings(3000))
    sink = MarkedAheadSink()
    f = forwarder(store, on_writer, sink)
    run_until(f, lambda: f.position == 3000)
    assert sink.positions == list(range(1, 3001))
    assert sink.during_send == [True, True]
    assert sink.marked == [(1, 1000), (1001, 2000), (2001, 3000)]  # once per attempt
    taken = [a.marks["taken_at"] for a in sink.attempts if a.marks]
    assert len(taken) == 3 and taken == sorted(taken)
