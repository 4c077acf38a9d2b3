"""BufferStore: the DuckDB file that keeps every reading durably; one batch is one transaction.

One owner (the gateway's writer thread) calls the writing methods; readers on any thread take a
cursor for the length of a `reading()` block, which DuckDB's MVCC keeps consistent while batches
commit, and which the writer's periodic recycle of the database waits for.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from gateway.buffer import outbox, retention
from gateway.buffer.connection import add_counters, connect, scalar, used_bytes
from gateway.buffer.devices import DeviceRegistry
from gateway.buffer.fence import ReopenFence
from gateway.buffer.schema import COUNTERS, DDL, SCHEMA_VERSION
from gateway.buffer.sql import run_query
from gateway.errors import BufferStoreError
from gateway.ingest.redelivery import InflightEntry
from gateway.model import IngestBatch

logger = logging.getLogger(__name__)

T = TypeVar("T")

_HEADER_BYTES = 3 * 4096  # DuckDB's file header and its two database headers

# DuckDB's database instance keeps native memory for every small commit (about 1.5 KB each here,
# outside its own memory accounting) until the database is closed, so the writer closes and
# reopens it after this many commits (see "Memory" in docs/benchmarks.md).
RECYCLE_AFTER_COMMITS = 2000
RECYCLE_WAIT = 0.5  # seconds a recycle waits for readers to finish before trying again later


@dataclass(frozen=True, slots=True)
class CommitResult:
    first_id: int  # position of the batch's first reading (or the next position if none)
    readings: pa.Table  # the committed readings, READINGS_SCHEMA, with id and event_id
    quarantined: int
    copies: int = 0  # messages dropped as copies of ones the buffer held (routes' dedup_window)


@dataclass(frozen=True, slots=True)
class _FailedAppend:
    batch: IngestBatch  # the very object the writer retries with
    first: int
    readings_n: int
    q_first: int
    quarantine_n: int
    readings: pa.Table


class BufferStore:
    """The writable buffer. Not thread-safe for writes: one thread owns it."""

    def __init__(
        self,
        path: Path,
        lock_wait: float = 15.0,
        recycle_after: int | None = RECYCLE_AFTER_COMMITS,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = connect(self.path, read_only=False, lock_wait=lock_wait)
        self._fence = ReopenFence()  # readers' cursors against the writer's close and reopen
        self._closed = False
        # The handle is unusable until the file is opened again: a fatal error (disk full in a
        # checkpoint) killed it, or a recycle closed it and could not open the file again.
        self._invalidated = False
        self._invalid_cause = ""
        self._failed: _FailedAppend | None = None
        self._recycle_after = recycle_after
        self._commits = 0  # since the database was last opened
        self.reopens = 0  # after fatal errors or failed recycles
        self.recycles = 0
        self.recycle_failures = 0  # recycles after a commit that could not open the file again
        self._check_length()
        self._prepare()
        self._event_prefix = f"{self.buffer_uid}-"
        # Made once: across reopens the registry in memory is ahead of its table.
        try:
            self.registry = DeviceRegistry(self._con, self._next_reading_id)
        except duckdb.Error as exc:
            self._con.close()
            raise BufferStoreError(f"buffer {self.path}: cannot read the devices: {exc}") from None

    def _prepare(self) -> None:
        try:
            for statement in DDL:
                self._con.execute(statement)
            self._init_meta()
            # Positions never go back, even when retention emptied a table: sinks name their
            # uploads by position, so a reused position would be skipped upstream as loaded.
            totals = self._counters(self._con)
            self._next_reading_id = max(self._max_id("readings"), totals["readings_total"]) + 1
            self._next_quarantine_id = (
                max(self._max_id("quarantine"), totals["quarantined_total"]) + 1
            )
            self._next_alert_id = max(self._max_id("alerts"), totals["alerts_total"]) + 1
        except duckdb.Error as exc:
            self._con.close()
            raise BufferStoreError(
                f"buffer {self.path}: cannot prepare tables: {exc}; the file may be damaged: "
                f"stop the gateway and run `edge-gateway buffer check -b {self.path}`"
            ) from None

    def _check_length(self) -> None:
        """Refuse a file that ends before a block its tables use: a torn copy or a cut-off write.

        DuckDB's own block count is no measure: it counts free blocks too, and trailing free
        blocks are cut off the file after a checkpoint, so a healthy file is often shorter.
        """
        sizes = self._con.execute("SELECT block_size FROM pragma_database_size()").fetchone()
        if not sizes:
            return
        block_size = int(sizes[0])
        tables = [
            t for (t,) in self._con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        ]
        highest = -1
        for table in tables:
            row = self._con.execute(
                "SELECT max(greatest(block_id, coalesce(list_max(additional_block_ids), -1))) "
                "FROM pragma_storage_info(?)",
                [table],
            ).fetchone()
            if row and row[0] is not None:
                highest = max(highest, int(row[0]))
        actual = self.path.stat().st_size
        needed = _HEADER_BYTES + (highest + 1) * block_size
        if actual < needed:
            self._con.close()
            raise BufferStoreError(
                f"buffer {self.path}: the file is cut short ({actual} of at least {needed} "
                f"bytes); stop the gateway and run `edge-gateway buffer recover -b {self.path}`"
            )

    def _note_failure(self, exc: duckdb.Error) -> None:
        # DuckDB invalidates the whole database after a fatal error (a checkpoint that hit a
        # full disk); every later statement fails until the file is opened again.
        if isinstance(exc, duckdb.FatalException) or "invalidated" in str(exc):
            self._invalidated = True
            self._invalid_cause = "a fatal error"

    def _ensure_open(self) -> None:
        """Reopen the file after a fatal error or a failed recycle; what was committed before
        is in the file or its WAL. Raises BufferStoreError while it cannot be opened."""
        if not self._invalidated:
            return
        with self._fence.exclusive():
            self._reopen()
        self.reopens += 1
        logger.warning("buffer %s: reopened after %s", self.path, self._invalid_cause)

    def recycle(self, timeout: float | None = RECYCLE_WAIT) -> bool:
        """Close and reopen the database (writer thread), which gives back the native memory
        DuckDB holds for past commits; False, and nothing done, while readers stayed busy."""
        with self._fence.exclusive(timeout) as alone:
            if not alone:
                return False
            self._reopen()
        self.recycles += 1
        return True

    def _reopen(self) -> None:
        """With the fence held alone: close (DuckDB checkpoints on close) and open again. If the
        open fails, the handle stays invalid and the next write tries again."""
        self._invalidated = True
        self._invalid_cause = self._invalid_cause or "a failed reopen"
        with contextlib.suppress(duckdb.Error):
            self._con.close()
        self._con = connect(self.path, read_only=False, lock_wait=15.0)
        self._prepare()
        self._invalidated = False
        self._invalid_cause = ""
        self._commits = 0

    def _committed(self) -> None:
        """After a successful commit: recycle when due. Never raises: the caller would take
        the commit for failed and write it again; a reopen that failed is redone by the next
        write (`_ensure_open`), readers meanwhile get DuckDB's error for a closed handle."""
        self._commits += 1
        after = self._recycle_after
        if not after or self._commits < after:
            return
        try:
            if not self.recycle():
                self._commits -= max(after // 10, 1)  # readers were busy: try again a bit later
        except Exception as exc:  # whatever it was, the commit before it stands
            self.recycle_failures += 1
            self._invalidated = True
            self._invalid_cause = "a failed recycle"
            logger.error(
                "buffer %s: recycle after a commit failed, the commit stands; "
                "reopening before the next write: %s",
                self.path,
                exc,
            )

    # -- set-up ---------------------------------------------------------------------------
    def _init_meta(self) -> None:
        self._con.execute(
            "INSERT OR IGNORE INTO meta VALUES ('buffer_uid', ?), ('schema_version', ?)",
            [secrets.token_hex(8), SCHEMA_VERSION],
        )
        self._con.execute(
            "INSERT OR IGNORE INTO counters SELECT unnest(?::VARCHAR[]), 0", [list(COUNTERS)]
        )
        row = self._con.execute("SELECT value FROM meta WHERE key = 'buffer_uid'").fetchone()
        assert row is not None
        self.buffer_uid: str = row[0]

    def _max_id(self, table: str) -> int:
        row = self._con.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()
        assert row is not None
        return int(row[0])

    @contextlib.contextmanager
    def reading(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A fresh cursor for reading from any thread (sinks, the API, status), valid inside the
        block: the writer neither closes nor reopens the database while it is in use."""
        with self._fence.shared():
            if self._closed:
                raise BufferStoreError(f"buffer {self.path}: closed")
            con = self._con.cursor()
            try:
                yield con
            finally:
                with contextlib.suppress(duckdb.Error):
                    con.close()

    def query(self, sql: str, row_limit: int | None = None) -> pa.Table:
        """One read-only statement (see gateway/buffer/sql.py) on a fresh cursor."""
        with self.reading() as con:
            return run_query(con, sql, row_limit)

    def write(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """`fn(connection)` in one transaction on the writer thread (sinks' cursors, state)."""
        self._ensure_open()
        con = self._con
        try:
            con.begin()
            result = fn(con)
            con.commit()
        except BaseException as exc:
            with contextlib.suppress(duckdb.Error):
                con.rollback()
            if isinstance(exc, duckdb.Error):
                self._note_failure(exc)
            raise
        self._committed()
        return result

    def write_devices(self, force: bool = False) -> None:
        """Write the device registry's changes when a second has passed since the last write
        (or `force`), in a transaction of their own (gateway/buffer/devices.py)."""
        if not self.registry.due(now=float("inf") if force else None):
            return
        try:
            self.write(self.registry.write)
        except duckdb.Error as exc:
            raise BufferStoreError(f"buffer {self.path}: cannot write the devices: {exc}") from exc
        self.registry.written()

    def close(self) -> None:
        try:
            self.write_devices(force=True)
        except BufferStoreError as exc:
            logger.warning("buffer %s: writing the devices on close failed: %s", self.path, exc)
        with self._fence.exclusive():
            try:
                self._con.execute("CHECKPOINT")
            except duckdb.Error as exc:
                logger.warning("buffer %s: checkpoint on close failed: %s", self.path, exc)
            self._con.close()
            self._closed = True

    # -- writing --------------------------------------------------------------------------
    @property
    def next_reading_id(self) -> int:
        return self._next_reading_id

    def inflight_entries(self) -> list[InflightEntry]:
        self._ensure_open()
        rows = self._con.execute("SELECT mid, topic, digest, batch FROM mqtt_inflight").fetchall()
        return [(int(m), str(t), int(d), int(b)) for m, t, d, b in rows]

    def known_identities(self, identities: list[int], now: float) -> set[int]:
        """Which of these content identities (gateway/ingest/content.py) are held, unexpired."""
        self._ensure_open()
        # A parameter, not a registered table: DuckDB refuses register() on a connection that
        # still holds a result another read left unfinished (fetchone), and execute() does not.
        rows = self._con.execute(
            "SELECT DISTINCT digest FROM content_identities "
            "WHERE expires_at > ? AND digest IN (SELECT unnest(?::BIGINT[]))",
            [now, identities],
        ).fetchall()
        return {int(d) for (d,) in rows}

    def append(
        self, batch: IngestBatch, inflight: list[InflightEntry], forget_upto_batch: int = 0
    ) -> CommitResult:
        """Commit a batch's readings, quarantine rows and redelivery entries in one transaction.

        Redelivery entries of batches up to `forget_upto_batch` are deleted in the same commit.
        A retry after a fatal error reopens the file first; if the failed attempt had reached
        the file after all (a checkpoint failed after the commit), it is not written twice.
        """
        self._ensure_open()
        landed = self._landed_before(batch)
        if landed is not None:
            self.registry.add(batch.devices, self._next_reading_id - 1)
            return landed
        readings, quarantine, retained, identities, copies = self._without_copies(batch)
        n = readings.num_rows
        first = self._next_reading_id
        ids = pa.array(range(first, first + n), pa.int64())
        event_ids = pc.binary_join_element_wise(self._event_prefix, pc.cast(ids, pa.string()), "")
        readings = readings.add_column(0, "event_id", event_ids).add_column(0, "id", ids)
        q = quarantine
        q_first = self._next_quarantine_id
        q = q.add_column(0, "id", pa.array(range(q_first, q_first + q.num_rows), pa.int64()))
        con = self._con
        try:
            # Each statement costs DuckDB a few hundred microseconds whatever its size, and a
            # commit may hold two readings: Arrow tables go in as relations (no register and
            # unregister around an INSERT), the counters in one UPDATE.
            con.begin()
            if n:
                con.from_arrow(readings).insert_into("readings")
            if retained:
                retained_ids = pa.table({"id": pa.array([first + i for i in retained], pa.int64())})
                con.from_arrow(retained_ids).insert_into("retained_readings")
            if q.num_rows:
                con.from_arrow(q).insert_into("quarantine")
            if forget_upto_batch:
                con.execute("DELETE FROM mqtt_inflight WHERE batch <= ?", [forget_upto_batch])
            if identities:
                held = pa.table(
                    {
                        "digest": pa.array([i[0] for i in identities], pa.int64()),
                        "expires_at": pa.array([i[1] for i in identities], pa.float64()),
                    }
                )
                con.from_arrow(held).insert_into("content_identities")
                if self._commits % 500 == 0 and batch.messages:  # now and then, not each time
                    now = max(m.received_at for m in batch.messages)
                    con.execute("DELETE FROM content_identities WHERE expires_at < ?", [now])
            if inflight:
                # Several rows may share a packet id: a broker that reuses an id while the
                # first message under it is unacked (see gateway/ingest/redelivery.py).
                entries = pa.table(
                    {
                        "mid": pa.array([e[0] for e in inflight], pa.int32()),
                        "topic": pa.array([e[1] for e in inflight], pa.string()),
                        "digest": pa.array([e[2] for e in inflight], pa.int64()),
                        "batch": pa.array([e[3] for e in inflight], pa.int64()),
                    }
                )
                con.from_arrow(entries).insert_into("mqtt_inflight")
            add_counters(
                self._con,
                readings_total=n,
                quarantined_total=q.num_rows,
                duplicates_dropped_total=batch.duplicates + copies,
                empty_payloads_total=batch.empty,
            )
            con.commit()
        except duckdb.Error as exc:
            with contextlib.suppress(duckdb.Error):
                con.rollback()
            self._note_failure(exc)
            self._failed = _FailedAppend(batch, first, n, q_first, q.num_rows, readings)
            raise BufferStoreError(f"buffer {self.path}: commit failed: {exc}") from exc
        self._failed = None
        self._next_reading_id += n
        self._next_quarantine_id += q.num_rows
        self.registry.add(batch.devices, self._next_reading_id - 1)
        self._committed()
        return CommitResult(first, readings, q.num_rows, copies)

    def _without_copies(
        self, batch: IngestBatch
    ) -> tuple[pa.Table, pa.Table, list[int], list[tuple[int, float]], int]:
        """The batch's readings, quarantine rows, retained rows and identities without the
        messages whose content identity the buffer holds unexpired, and how many those were."""
        if not batch.identities:
            return batch.readings, batch.quarantine, batch.retained, batch.identities, 0
        now = max(m.received_at for m in batch.messages)
        held = self.known_identities([i for i, _ in batch.identities], now)
        if not held:
            return batch.readings, batch.quarantine, batch.retained, batch.identities, 0
        keep = [i not in held for i in batch.reading_identities]
        retained_rows = set(batch.retained)
        kept_rows = [row for row, kept in enumerate(keep) if kept]
        retained = [new for new, old in enumerate(kept_rows) if old in retained_rows]
        readings = batch.readings.filter(pa.array(keep, pa.bool_()))
        keep_q = pa.array([i not in held for i in batch.quarantine_identities], pa.bool_())
        identities = [(i, expires) for i, expires in batch.identities if i not in held]
        return (
            readings,
            batch.quarantine.filter(keep_q),
            retained,
            identities,
            len(batch.identities) - len(identities),
        )

    def _landed_before(self, batch: IngestBatch) -> CommitResult | None:
        """The result of a failed append of this very batch whose rows are in the file anyway.

        The file answers, not the positions kept in memory: a handle that was not reopened
        still has the positions from before the failed attempt. Positions from `first` on are
        only ever handed to that attempt, and retention cannot run between it and the retry
        (both on the writer thread). A batch of only duplicates leaves no rows to look for;
        writing its redelivery entries again replaces them.
        """
        failed, self._failed = self._failed, None
        if failed is None or failed.batch is not batch:
            return None
        try:
            if failed.readings_n:
                landed = self._has_ids_from("readings", failed.first)
            else:
                landed = bool(failed.quarantine_n) and self._has_ids_from(
                    "quarantine", failed.q_first
                )
        except duckdb.Error as exc:
            self._note_failure(exc)
            self._failed = failed  # the next retry asks again
            raise BufferStoreError(
                f"buffer {self.path}: cannot tell whether the failed commit reached the file: {exc}"
            ) from exc
        if not landed:
            return None
        self._next_reading_id = max(self._next_reading_id, failed.first + failed.readings_n)
        self._next_quarantine_id = max(
            self._next_quarantine_id, failed.q_first + failed.quarantine_n
        )
        logger.warning(
            "buffer %s: the failed commit had reached the file; not writing it twice", self.path
        )
        return CommitResult(failed.first, failed.readings, failed.quarantine_n)

    def _has_ids_from(self, table: str, first: int) -> bool:
        return scalar(self._con, f"SELECT count(*) FROM {table} WHERE id >= ?", [first]) > 0

    def append_alerts(self, alerts: pa.Table) -> int:
        """Append alert rows (ALERTS columns but `id` and `event_id`); returns the first id."""
        self._ensure_open()
        n = alerts.num_rows
        first = self._next_alert_id
        ids = pa.array(range(first, first + n), pa.int64())
        prefix = f"{self.buffer_uid}-a"
        event_ids = pc.binary_join_element_wise(prefix, pc.cast(ids, pa.string()), "")
        table = alerts.add_column(0, "event_id", event_ids).add_column(0, "id", ids)

        def insert(con: duckdb.DuckDBPyConnection) -> None:
            con.register("_batch_alerts", table)
            con.execute("INSERT INTO alerts BY NAME SELECT * FROM _batch_alerts")
            con.unregister("_batch_alerts")
            add_counters(self._con, alerts_total=n)

        try:
            self.write(insert)
        except duckdb.Error as exc:
            raise BufferStoreError(f"buffer {self.path}: alert commit failed: {exc}") from exc
        self._next_alert_id += n
        return first

    # -- state and cursors ----------------------------------------------------------------
    def put_state(self, owner: str, items: dict[str, Any]) -> None:
        """Replace an owner's persisted state (rule engine, decoders) in one transaction."""
        now = time.time()

        def replace(con: duckdb.DuckDBPyConnection) -> None:
            con.execute("DELETE FROM state WHERE owner = ?", [owner])
            if items:
                table = pa.table(
                    {
                        "owner": [owner] * len(items),
                        "key": list(items),
                        "value": [json.dumps(v) for v in items.values()],
                        "updated_at": pa.array([int(now * 1e6)] * len(items), pa.int64()).view(
                            pa.timestamp("us", tz="UTC")
                        ),
                    }
                )
                con.register("_state", table)
                con.execute("INSERT INTO state SELECT * FROM _state")
                con.unregister("_state")

        try:
            self.write(replace)
        except duckdb.Error as exc:
            raise BufferStoreError(
                f"buffer {self.path}: saving {owner} state failed: {exc}"
            ) from exc

    def get_state(self, owner: str) -> dict[str, Any]:
        self._ensure_open()
        rows = self._con.execute("SELECT key, value FROM state WHERE owner = ?", [owner]).fetchall()
        return {key: json.loads(value) for key, value in rows}

    def get_cursor(self, sink: str, stream: str = "readings") -> int:
        """On the writer thread (it reopens a database a failed recycle left closed)."""
        self._ensure_open()
        return outbox.load_cursor(self._con, sink, stream)

    def set_cursor(self, sink: str, position: int, stream: str = "readings") -> None:
        """Inside `write` (the writer's transaction)."""
        outbox.set_cursor(self._con, sink, stream, position)

    # -- retention ------------------------------------------------------------------------
    def used_bytes(self) -> int:
        return used_bytes(self._con, self.path)

    def purge(
        self,
        *,
        now: float,
        max_age: float,
        max_bytes: int,
        protected_after: int | None,
        drop_unsent: bool,
        released_after: int | None = None,
    ) -> retention.PurgeResult:
        """`retention.purge` on the writer's connection, with any DuckDB error (a CHECKPOINT on
        a full disk) as a BufferStoreError."""
        try:
            self._ensure_open()
            return retention.purge(
                self._con,
                self.path,
                self._next_reading_id,
                now=now,
                max_age=max_age,
                max_bytes=max_bytes,
                protected_after=protected_after,
                drop_unsent=drop_unsent,
                released_after=released_after,
            )
        except duckdb.Error as exc:
            with contextlib.suppress(duckdb.Error):
                self._con.rollback()
            self._note_failure(exc)
            raise BufferStoreError(f"buffer {self.path}: retention failed: {exc}") from exc

    # -- figures --------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        with self.reading() as con:
            return self._counters(con)

    @staticmethod
    def _counters(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
        rows = con.execute("SELECT name, value FROM counters").fetchall()
        return {str(name): int(value) for name, value in rows}
