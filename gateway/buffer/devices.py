"""The device registry: one row per device in the `devices` table, kept from the batches.

Each batch brings what its messages said of each device (`IngestBatch.devices`: first and last
arrival, message, reading and quarantine counts, availability, model and vendor, the routes it
came by). Once a batch is committed the writer joins it to what is pending, and once a second
it folds that into the devices' rows (read, added to, written back) in a transaction of its
own, with the reading position the registry has counted up to (`meta.devices_position`). A
DuckDB statement costs milliseconds here: an upsert per commit would double the cost of a
small commit. Memory holds only the devices heard from since the last write.

After a crash the registry is up to a second behind the readings. Opening the buffer brings
it level with what the readings themselves tell (arrivals, reading counts, availability,
model and vendor after the position); the message and quarantine counts of that last second
are lost, the readings are not.

Owned by the writer thread; readers query the table.
"""

from __future__ import annotations

import time

import duckdb
import pyarrow as pa

from gateway.model import UTC_MICROS, DeviceSeen

WRITE_INTERVAL = 1.0  # seconds between writes of the registry while batches commit

_COLUMNS = (
    "device",
    "first_seen",
    "last_seen",
    "messages",
    "readings",
    "quarantined",
    "availability",
    "availability_since",
    "availability_changes",
    "model",
    "vendor",
    "routes",
)


class DeviceRegistry:
    """What committed batches said of each device since the registry's last write. Memory holds
    only those devices (the ones heard from since then), not every device seen: a flood of
    invented device names grows the table on disk, not the process."""

    def __init__(self, con: duckdb.DuckDBPyConnection, next_reading_id: int) -> None:
        self._pending: dict[str, DeviceSeen] = {}
        self._written_at = float("-inf")
        row = con.execute("SELECT value FROM meta WHERE key = 'devices_position'").fetchone()
        self.position = int(row[0]) if row else 0  # the highest reading id counted
        self._catch_up(con, next_reading_id)

    def add(self, devices: dict[str, DeviceSeen], last_id: int) -> None:
        """A committed batch's devices; `last_id` is its highest reading id."""
        pending = self._pending
        for name, seen in devices.items():
            known = pending.get(name)
            if known is None:
                known = pending[name] = DeviceSeen(seen.first_seen, seen.last_seen)
            known.join(seen)
        self.position = max(self.position, last_id)

    def due(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return bool(self._pending) and now - self._written_at >= WRITE_INTERVAL

    def write(self, con: duckdb.DuckDBPyConnection) -> None:
        """Fold what is pending into the devices' rows and write them with the position,
        inside the caller's transaction; the caller calls `written` once it committed (until
        then a retry folds the same again into the rows as they were)."""
        names = sorted(self._pending)
        rows = _stored(con, names)
        for name in names:
            seen = self._pending[name]
            row = rows.get(name)
            if row is None:
                row = rows[name] = DeviceSeen(seen.first_seen, seen.last_seen)
            row.add(seen)
        con.execute("DELETE FROM devices WHERE device IN (SELECT unnest(?::VARCHAR[]))", [names])
        con.from_arrow(_table(names, [rows[n] for n in names])).insert_into("devices")
        con.execute(
            "INSERT OR REPLACE INTO meta VALUES ('devices_position', ?)", [str(self.position)]
        )

    def written(self) -> None:
        self._pending.clear()
        self._written_at = time.monotonic()

    def _catch_up(self, con: duckdb.DuckDBPyConnection, next_reading_id: int) -> None:
        """Count the readings committed after the registry's last write (a crash between two
        writes), as far as the readings tell."""
        after = self.position
        if after >= next_reading_id - 1:
            return
        seen: dict[str, DeviceSeen] = {}
        for name, count, first, last in con.execute(
            "SELECT device, count(*), epoch_us(min(ingest_time)), epoch_us(max(ingest_time)) "
            "FROM readings WHERE id > ? GROUP BY device",
            [after],
        ).fetchall():
            seen[name] = DeviceSeen(first, last, readings=count)
        for name, metric, text, at in con.execute(
            "SELECT device, metric, text, epoch_us(ingest_time) FROM readings WHERE id > ? "
            "AND metric IN ('availability', 'model', 'vendor') AND text IS NOT NULL ORDER BY id",
            [after],
        ).fetchall():
            entry = seen[name]
            if metric == "availability":
                entry.said_availability(text, at)
            elif metric == "model":
                entry.model = text
            else:
                entry.vendor = text
        self.add(seen, next_reading_id - 1)
        con.begin()
        self.write(con)
        con.commit()
        self.written()


def _table(names: list[str], rows: list[DeviceSeen]) -> pa.Table:
    micros = pa.int64()
    return pa.table(
        {
            "device": pa.array(names, pa.string()),
            "first_seen": pa.array([r.first_seen for r in rows], micros).view(UTC_MICROS),
            "last_seen": pa.array([r.last_seen for r in rows], micros).view(UTC_MICROS),
            "messages": pa.array([r.messages for r in rows], pa.int64()),
            "readings": pa.array([r.readings for r in rows], pa.int64()),
            "quarantined": pa.array([r.quarantined for r in rows], pa.int64()),
            "availability": pa.array([r.availability for r in rows], pa.string()),
            "availability_since": pa.array([r.availability_since for r in rows], micros).view(
                UTC_MICROS
            ),
            "availability_changes": pa.array([r.availability_changes for r in rows], pa.int64()),
            "model": pa.array([r.model for r in rows], pa.string()),
            "vendor": pa.array([r.vendor for r in rows], pa.string()),
            "routes": pa.array([sorted(r.routes) for r in rows], pa.list_(pa.string())),
        }
    )


def _stored(con: duckdb.DuckDBPyConnection, names: list[str]) -> dict[str, DeviceSeen]:
    """The rows the table holds for these devices."""
    query = f"""SELECT {", ".join(_COLUMNS)} FROM (
        SELECT * REPLACE (
            epoch_us(first_seen) AS first_seen, epoch_us(last_seen) AS last_seen,
            epoch_us(availability_since) AS availability_since)
        FROM devices WHERE device IN (SELECT unnest(?::VARCHAR[])))"""
    found: dict[str, DeviceSeen] = {}
    for values in con.execute(query, [names]).fetchall():
        name, first, last, messages, readings, quarantined = values[:6]
        availability, since, changes, model, vendor, routes = values[6:]
        found[name] = DeviceSeen(
            first,
            last,
            messages,
            readings,
            quarantined,
            availability,
            since,
            changes,
            model,
            vendor,
            set(routes),
        )
    return found
