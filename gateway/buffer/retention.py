"""Retention: delete readings by age, then the oldest while the file is over its size cap,
keeping what a sink has not confirmed unless told to drop it (`buffer.retention`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import duckdb

from gateway.buffer.connection import add_counters, scalar, used_bytes
from gateway.errors import BufferStoreError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PurgeResult:
    readings: int
    quarantine: int
    unsent: int  # readings dropped before every sink had them (on_full: drop_oldest)
    released: int = 0  # readings dropped that only released disabled sinks lacked


def purge(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    next_reading_id: int,
    *,
    now: float,
    max_age: float,
    max_bytes: int,
    protected_after: int | None,
    drop_unsent: bool,
    released_after: int | None,
) -> PurgeResult:
    """Delete readings older than max_age, then the oldest while the file is over max_bytes.

    Readings with id > protected_after (not yet confirmed by every sink) are kept unless
    drop_unsent; quarantine rows only follow the age limit and the size limit. Readings
    deleted with id > released_after (not confirmed by a disabled sink the config released)
    are counted in `purged_released_total`.
    """
    limit = protected_after if protected_after is not None else next_reading_id
    # Past `limit` deletions are counted as unsent already; count each reading once.
    given_up = released_after if released_after is not None else limit
    cutoff = now - max_age
    purged = quarantine = unsent = released = 0
    con.begin()
    try:
        if given_up < limit:
            released += scalar(
                con,
                "SELECT count(*) FROM readings WHERE ingest_time < to_timestamp(?) "
                "AND id > ? AND id <= ?",
                [cutoff, given_up, limit],
            )
        purged += scalar(
            con,
            "DELETE FROM readings WHERE ingest_time < to_timestamp(?) AND id <= ?",
            [cutoff, limit],
        )
        quarantine += scalar(
            con, "DELETE FROM quarantine WHERE received_at < to_timestamp(?)", [cutoff]
        )
        add_counters(con, purged_released_total=released)
        con.commit()
    except duckdb.Error as exc:
        con.rollback()
        raise BufferStoreError(f"buffer {path}: retention failed: {exc}") from exc
    if purged or quarantine:
        con.execute("CHECKPOINT")
    # Over the size cap: drop the oldest tenth at a time until under it (or nothing left).
    # DuckDB frees space a whole row group (122,880 rows) at a time; when a round freed
    # nothing, stop until the next check rather than dropping everything now.
    before: int | None = None
    for _ in range(20):
        used = used_bytes(con, path)
        if used <= max_bytes or (before is not None and used >= before):
            break
        before = used
        row = con.execute("SELECT min(id), max(id), count(*) FROM readings").fetchone()
        if not row or not row[2]:
            break
        low, _high, count = int(row[0]), int(row[1]), int(row[2])
        upto = low + max(count // 10, 1) - 1
        if not drop_unsent:
            upto = min(upto, limit)
            if upto < low:
                logger.warning(
                    "buffer %s is over max_bytes but every reading is still unsent; "
                    "keeping them (retention.on_full: keep_unsent)",
                    path,
                )
                break
        con.begin()
        # Count what is really there: earlier rounds (and age limits) left holes.
        unsent_row = con.execute(
            "SELECT count(*) FROM readings WHERE id > ? AND id <= ?", [limit, upto]
        ).fetchone()
        unsent_now = int(unsent_row[0]) if unsent_row else 0
        released_now = 0
        if given_up < limit:
            released_now = scalar(
                con,
                "SELECT count(*) FROM readings WHERE id > ? AND id <= ?",
                [given_up, min(upto, limit)],
            )
        deleted = scalar(con, "DELETE FROM readings WHERE id <= ?", [upto])
        q = scalar(
            con,
            "DELETE FROM quarantine WHERE id <= (SELECT coalesce(min(id), 0) + "
            "count(*) // 10 FROM quarantine)",
            [],
        )
        add_counters(con, purged_unsent_total=unsent_now, purged_released_total=released_now)
        con.commit()
        purged += deleted
        quarantine += q
        unsent += unsent_now
        released += released_now
        con.execute("CHECKPOINT")
    if purged:
        con.execute(
            "DELETE FROM retained_readings WHERE id < (SELECT coalesce(min(id), ?) FROM readings)",
            [next_reading_id],
        )
    if purged or quarantine:
        add_counters(con, purged_readings_total=purged, purged_quarantine_total=quarantine)
        logger.info(
            "retention purged %d readings (%d unsent) and %d quarantined messages",
            purged,
            unsent,
            quarantine,
        )
    if released:
        logger.warning(
            "retention purged %d readings disabled sinks had not confirmed "
            "(buffer.retention.release_disabled_sinks)",
            released,
        )
    return PurgeResult(purged, quarantine, unsent, released)
