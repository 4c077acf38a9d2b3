"""The buffer's periodic close and reopen: readers on other threads never meet a closed cursor,
a recycle waits for them (and gives up rather than stall the writer), and nothing changes for
what was committed."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import gateway.buffer.store as store_module
from gateway.buffer import connection
from gateway.buffer.fence import ReopenFence
from gateway.buffer.store import BufferStore
from gateway.errors import BufferStoreError
from gateway.model import DECODED_QUARANTINE_SCHEMA, DECODED_READINGS_SCHEMA, IngestBatch


def batch(start: int, n: int) -> IngestBatch:
    now = time.time()
    columns: dict[str, pa.Array] = {}
    for field in DECODED_READINGS_SCHEMA:
        if field.name == "value":
            columns[field.name] = pa.array([float(v) for v in range(start, start + n)])
        elif pa.types.is_timestamp(field.type):
            columns[field.name] = pa.array([int(now * 1e6)] * n, pa.int64()).view(field.type)
        elif pa.types.is_string(field.type):
            columns[field.name] = pa.array([field.name] * n)
        else:
            columns[field.name] = pa.nulls(n, field.type)
    readings = pa.table(columns, schema=DECODED_READINGS_SCHEMA)
    return IngestBatch(readings, DECODED_QUARANTINE_SCHEMA.empty_table())


def test_readers_on_other_threads_never_meet_a_recycle(tmp_path: Path) -> None:
    """Four threads read without pause while the writer commits 400 batches and recycles the
    database every 10 commits: no read fails, and every read sees whole batches."""
    store = BufferStore(tmp_path / "buffer.duckdb", recycle_after=10)
    stop = threading.Event()
    errors: list[BaseException] = []
    reads = [0] * 4

    def read(slot: int) -> None:
        while not stop.is_set():
            try:
                with store.reading() as con:
                    row = con.execute("SELECT count(*), coalesce(sum(value), 0) FROM readings")
                    n, total = row.fetchone() or (0, 0)
                assert n % 7 == 0, f"a read saw part of a batch: {n} readings"
                assert total == n * (n - 1) / 2
                reads[slot] += 1
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=read, args=(slot,)) for slot in range(4)]
    for thread in threads:
        thread.start()
    try:
        for k in range(400):
            store.append(batch(k * 7, 7), [])
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert min(reads) > 0
    assert store.recycles >= 20  # some gave way to busy readers and ran a few commits later
    assert store.counters()["readings_total"] == 2800
    store.close()


def test_a_recycle_waits_for_a_reader_and_gives_up_after_its_timeout(tmp_path: Path) -> None:
    store = BufferStore(tmp_path / "buffer.duckdb", recycle_after=None)
    store.append(batch(0, 5), [])
    inside, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with store.reading() as con:
            con.execute("SELECT 1").fetchall()
            inside.set()
            leave.wait()
            con.execute("SELECT 1").fetchall()  # the cursor is still open

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(5)
    started = time.monotonic()
    assert store.recycle(timeout=0.3) is False
    assert time.monotonic() - started >= 0.3
    assert store.recycles == 0
    leave.set()
    holder.join()
    assert store.recycle(timeout=0.3) is True
    assert store.recycles == 1
    store.close()


def test_a_recycle_keeps_positions_counters_and_state(tmp_path: Path) -> None:
    store = BufferStore(tmp_path / "buffer.duckdb", recycle_after=3)
    for k in range(3):
        store.append(batch(k * 10, 10), [(k + 1, "sensors/x", 42, k + 1)])
    assert store.recycles == 1
    store.put_state("rules", {"snapshot": {"n": 1}})
    first = store.append(batch(30, 10), []).first_id
    assert first == 31
    assert store.counters()["readings_total"] == 40
    assert store.get_state("rules") == {"snapshot": {"n": 1}}
    assert [e[0] for e in store.inflight_entries()] == [1, 2, 3]
    store.close()


def test_new_readers_wait_while_a_recycle_is_waiting() -> None:
    """A recycle waiting for the last reader keeps new readers out, so a steady stream of
    readers cannot starve it."""
    fence = ReopenFence()
    order: list[str] = []
    first_in = threading.Event()
    release_first = threading.Event()

    def first_reader() -> None:
        with fence.shared():
            first_in.set()
            release_first.wait()
            order.append("first reader out")

    def recycle() -> None:
        with fence.exclusive(timeout=5) as alone:
            assert alone
            order.append("recycled")

    def late_reader() -> None:
        with fence.shared():
            order.append("late reader in")

    threads = [threading.Thread(target=first_reader)]
    threads[0].start()
    assert first_in.wait(5)
    threads.append(threading.Thread(target=recycle))
    threads[1].start()
    deadline = time.monotonic() + 5
    while not fence._reopening and time.monotonic() < deadline:  # the recycle is waiting
        time.sleep(0.01)
    threads.append(threading.Thread(target=late_reader))
    threads[2].start()
    time.sleep(0.1)
    release_first.set()
    for thread in threads:
        thread.join(5)
    assert order == ["first reader out", "recycled", "late reader in"]


def fail_next_open(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The store's next open of the file fails once (as when the process is out of file
    descriptors or memory); returns the list of the opens that failed."""
    real = connection.connect
    failed: list[Path] = []

    def connect(path: Path, *, read_only: bool, lock_wait: float = 0.0) -> Any:
        if not failed:
            failed.append(path)
            raise BufferStoreError(f"buffer {path}: cannot open: injected failure")
        return real(path, read_only=read_only, lock_wait=lock_wait)

    monkeypatch.setattr(store_module, "connect", connect)
    return failed


def values(store: BufferStore) -> list[float]:
    return [v for (v,) in store._con.execute("SELECT value FROM readings ORDER BY id").fetchall()]


def test_a_failed_reopen_after_a_commit_does_not_fail_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The recycle after the second commit cannot open the file again. The batch is committed,
    so append returns normally (the writer would append it again otherwise), and the next
    append reopens the file first."""
    store = BufferStore(tmp_path / "buffer.duckdb", recycle_after=2)
    failed = fail_next_open(monkeypatch)
    store.append(batch(0, 7), [])
    second = batch(7, 7)
    tries = 0
    while True:  # the gateway writer's retry (app.py, _ingest_loop.commit)
        tries += 1
        try:
            result = store.append(second, [])
            break
        except BufferStoreError:
            assert tries < 5
    assert failed, "the recycle did not try to open the file"
    assert result.first_id == 8
    third = store.append(batch(14, 7), [])
    assert third.first_id == 15
    assert values(store) == [float(v) for v in range(21)]
    assert store.counters()["readings_total"] == 21
    assert tries == 1
    assert store.recycle_failures == 1 and store.reopens == 1
    assert "recycle after a commit failed" in caplog.text
    store.close()


def test_a_failed_reopen_after_a_write_does_not_fail_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same after a sink's cursor move and an alert commit: both stand, once each."""
    store = BufferStore(tmp_path / "buffer.duckdb", recycle_after=1)
    store.append(batch(0, 7), [])
    fail_next_open(monkeypatch)
    store.write(lambda con: store.set_cursor("uplink", 7))  # the recycle after it fails
    assert store.get_cursor("uplink") == 7  # reopened first
    alerts = pa.table(
        {
            "alert_time": pa.array([0], pa.int64()).view(pa.timestamp("us", tz="UTC")),
            "rule_id": ["hot"],
            "device": ["d"],
            "metric": ["t"],
            "severity": ["warning"],
            "state": ["firing"],
            "message": pa.array([None], pa.string()),
            "value": [1.0],
            "reading_event_id": pa.array([None], pa.string()),
        }
    )
    fail_next_open(monkeypatch)
    assert store.append_alerts(alerts) == 1
    assert store.append_alerts(alerts) == 2
    ids = store._con.execute("SELECT id FROM alerts ORDER BY id").fetchall()
    assert ids == [(1,), (2,)]
    assert store.recycle_failures == 2
    store.close()
