"""The event model: raw MQTT messages in; readings and quarantined messages out, as Arrow."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

UTC_MICROS = pa.timestamp("us", tz="UTC")

# One reading per row. `id` is the reading's position in the buffer (dense, increasing); it is
# what sink cursors point at. `event_id` is globally unique and travels upstream.
READINGS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_time", UTC_MICROS, nullable=False),
        pa.field("ingest_time", UTC_MICROS, nullable=False),
        pa.field("device", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("text", pa.string()),
        pa.field("unit", pa.string()),
        pa.field("topic", pa.string(), nullable=False),
        pa.field("tags", pa.string()),  # JSON object, e.g. {"site": "home"}
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("received_at", UTC_MICROS, nullable=False),
        pa.field("topic", pa.string(), nullable=False),
        pa.field("payload", pa.binary(), nullable=False),
        pa.field("payload_bytes", pa.int64(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ]
)


# The tag decoders put on backfilled readings (Sparkplug `is_historical`): stored and shipped,
# old by design (no clock skew), never news for live rules.
HISTORICAL_TAG = '"historical":"true"'

# The tag a route's skew policy (gateway/ingest/skew.py) puts on a reading whose device time is
# further from its arrival than the route's `max_clock_skew`: rules use its arrival time
# (adjusted) or do not evaluate it (dropped). The stored event time stays the device's.
SKEW_TAG = '"clock_skew":'
SKEW_ADJUSTED = '"clock_skew":"adjusted"'
SKEW_DROPPED = '"clock_skew":"dropped"'

# What decoding produces: the store adds `id` and `event_id` when it commits the batch.
DECODED_READINGS_SCHEMA = pa.schema(
    [f for f in READINGS_SCHEMA if f.name not in ("id", "event_id")]
)
DECODED_QUARANTINE_SCHEMA = pa.schema([f for f in QUARANTINE_SCHEMA if f.name != "id"])


@dataclass(slots=True, frozen=True)
class RawMessage:
    """One MQTT message as received, before decoding."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    dup: bool
    retain: bool
    received_at: float  # epoch seconds
    connection: int = 0  # which broker connection delivered it (counts up on every connect)
    # Which broker session it belongs to: counts up on every connect the broker answers with
    # no session present (a new session: packet ids of the old one mean nothing any more).
    session: int = 0
    # The broker sent it under a packet id it had already used on this connection for a
    # message not yet acked (its in-flight window is over 65,535): the id says nothing about
    # the earlier message.
    id_reused: bool = False
    # Delivered for a subscription other than the first that matches its topic (MQTT 5 names
    # it): a broker may send a message once per matching subscription, and this is not the
    # copy the gateway keeps. Acked, counted as a duplicate, not read.
    extra_copy: bool = False


@dataclass(slots=True)
class Decoded:
    """One reading as a decoder yields it; the router adds device, topic and tags."""

    metric: str
    value: float | None
    text: str | None
    unit: str | None = None
    event_time: float | None = None  # epoch seconds; None means "use ingest time"
    # False: the device time named no zone and was read as UTC; the route's `timezone` says
    # which zone it really is in (Tasmota's `Time` is the device's local time).
    zoned: bool = True


def timestamps(micros: list[int]) -> pa.Array:
    """UTC timestamps from integer epoch microseconds made in Python, not by Arrow compute: a
    compute call releases the GIL, and on the event loop, with the writer thread busy
    committing, getting it back costs far more than the conversion (the compute call was ~50 us
    fixed, and milliseconds under contention)."""
    return pa.array(micros, pa.int64()).view(UTC_MICROS)


def _micros(column: pa.ChunkedArray) -> list[int]:
    out: list[int] = []
    for chunk in column.chunks:  # a view, not a compute cast (see `timestamps`)
        out += chunk.view(pa.int64()).to_pylist()
    return out


@dataclass(slots=True)
class ReadingColumns:
    """Readings as Python lists, one per column, times in epoch microseconds: what decoding
    makes before it builds the Arrow table, and what the rules read (so a command can leave
    before the table is built). `id`/`event_id` only for committed readings."""

    event_time: list[int]
    ingest_time: list[int]
    device: list[str]
    metric: list[str]
    value: list[float | None]
    text: list[str | None]
    unit: list[str | None]
    topic: list[str]
    tags: list[str | None]
    id: list[int] | None = None
    event_id: list[str] | None = None

    def __len__(self) -> int:
        return len(self.device)

    def slice(self, start: int, end: int) -> ReadingColumns:
        return ReadingColumns(
            self.event_time[start:end],
            self.ingest_time[start:end],
            self.device[start:end],
            self.metric[start:end],
            self.value[start:end],
            self.text[start:end],
            self.unit[start:end],
            self.topic[start:end],
            self.tags[start:end],
            None if self.id is None else self.id[start:end],
            None if self.event_id is None else self.event_id[start:end],
        )

    def runs(self, flags: list[bool]) -> list[tuple[ReadingColumns, bool]]:
        """The rows as runs of equal flags, in order (e.g. from retained messages or not)."""
        runs: list[tuple[ReadingColumns, bool]] = []
        start = 0
        for end in range(1, len(flags) + 1):
            if end == len(flags) or flags[end] != flags[start]:
                runs.append((self.slice(start, end), flags[start]))
                start = end
        return runs

    @classmethod
    def of(cls, table: pa.Table) -> ReadingColumns:
        """From a READINGS_SCHEMA table (or a decoded one, without ids)."""
        committed = "event_id" in table.column_names

        def strings(name: str) -> list[Any]:
            return table.column(name).to_pylist()  # type: ignore[no-any-return]

        return cls(
            _micros(table.column("event_time")),
            _micros(table.column("ingest_time")),
            strings("device"),
            strings("metric"),
            strings("value"),
            strings("text"),
            strings("unit"),
            strings("topic"),
            strings("tags"),
            strings("id") if committed else None,
            strings("event_id") if committed else None,
        )

    def table(self) -> pa.Table:
        """The decoded readings (DECODED_READINGS_SCHEMA)."""
        return pa.Table.from_arrays(
            [
                timestamps(self.event_time),
                timestamps(self.ingest_time),
                pa.array(self.device, pa.string()),
                pa.array(self.metric, pa.string()),
                pa.array(self.value, pa.float64()),
                pa.array(self.text, pa.string()),
                pa.array(self.unit, pa.string()),
                pa.array(self.topic, pa.string()),
                pa.array(self.tags, pa.string()),
            ],
            schema=DECODED_READINGS_SCHEMA,
        )


@dataclass(slots=True)
class DeviceSeen:
    """What the messages of one batch (or, summed, all of them) say about one device. Times are
    arrival times in epoch microseconds: a device's own clock may be wrong."""

    first_seen: int
    last_seen: int
    messages: int = 0  # messages its routes took, quarantined ones too
    readings: int = 0
    quarantined: int = 0
    availability: str | None = None  # online / offline, the latest said
    availability_since: int | None = None  # when it last changed
    availability_changes: int = 0  # how often it went on- or offline
    model: str | None = None
    vendor: str | None = None
    routes: set[str] = field(default_factory=set)  # the patterns of the routes it came by
    # Availability as this batch said it, in order, repeats left out: (state, arrival).
    availability_log: list[tuple[str, int]] = field(default_factory=list)

    def said_availability(self, state: str, at: int) -> None:
        """One availability reading, in arrival order."""
        log = self.availability_log
        if not log or log[-1][0] != state:
            log.append((state, at))

    def join(self, later: DeviceSeen) -> None:
        """Join what a later batch saw of the same device, into one batch's view (the
        availability said, in order)."""
        self._sum(later)
        for state, at in later.availability_log:
            self.said_availability(state, at)

    def add(self, later: DeviceSeen) -> None:
        """Fold in what a later batch saw of the same device, into the registry's view (where
        availability stands, since when, how often it changed)."""
        self._sum(later)
        for state, at in later.availability_log:
            if state == self.availability:
                continue
            if self.availability is not None:
                self.availability_changes += 1
            self.availability, self.availability_since = state, at

    def _sum(self, later: DeviceSeen) -> None:
        self.first_seen = min(self.first_seen, later.first_seen)
        self.last_seen = max(self.last_seen, later.last_seen)
        self.messages += later.messages
        self.readings += later.readings
        self.quarantined += later.quarantined
        self.model = later.model or self.model
        self.vendor = later.vendor or self.vendor
        self.routes |= later.routes


def joined_devices(batches: list[dict[str, DeviceSeen]]) -> dict[str, DeviceSeen]:
    """The devices of batches committed as one, in their order (the parts are consumed)."""
    joined: dict[str, DeviceSeen] = {}
    for devices in batches:
        for name, seen in devices.items():
            known = joined.get(name)
            if known is None:
                joined[name] = seen
            else:
                known.join(seen)
    return joined


@dataclass(slots=True)
class IngestBatch:
    """What one commit writes (decoded readings, quarantined messages) and the messages to ack."""

    readings: pa.Table
    quarantine: pa.Table
    messages: list[RawMessage] = field(default_factory=list)
    duplicates: int = 0  # redeliveries recognised and not stored again
    # Messages with an empty payload: no reading and no quarantine row, only counted (on MQTT an
    # empty retained message deletes the broker's retained value; see docs/ingest-formats.md).
    empty: int = 0
    number: int = 0  # the batch's number in the redelivery bookkeeping (set before commit)
    retained: list[int] = field(default_factory=list)  # rows from retained messages (known state)
    # Content identities of this batch's messages on routes with a `dedup_window`, each with
    # the time it expires (epoch seconds): committed with the batch (see ingest/content.py).
    identities: list[tuple[int, float]] = field(default_factory=list)
    # With identities: the identity of the message each reading / quarantine row came from
    # (None off dedup routes), so the buffer can drop the rows of a copy it already holds.
    reading_identities: list[int | None] = field(default_factory=list)
    quarantine_identities: list[int | None] = field(default_factory=list)
    # Per device: what this batch's messages said of it (the device registry's input).
    devices: dict[str, DeviceSeen] = field(default_factory=dict)

    @property
    def reading_count(self) -> int:
        return int(self.readings.num_rows)

    @property
    def quarantine_count(self) -> int:
        return int(self.quarantine.num_rows)
