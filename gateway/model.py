"""The event model: raw MQTT messages in; readings and quarantined messages out, as Arrow."""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass(slots=True)
class IngestBatch:
    """What one commit writes (decoded readings, quarantined messages) and the messages to ack."""

    readings: pa.Table
    quarantine: pa.Table
    messages: list[RawMessage] = field(default_factory=list)
    duplicates: int = 0  # redeliveries recognised and not stored again
    number: int = 0  # the batch's number in the redelivery bookkeeping (set before commit)
    retained: list[int] = field(default_factory=list)  # rows from retained messages (known state)
    # Content identities of this batch's messages on routes with a `dedup_window`, each with
    # the time it expires (epoch seconds): committed with the batch (see ingest/content.py).
    identities: list[tuple[int, float]] = field(default_factory=list)
    # With identities: the identity of the message each reading / quarantine row came from
    # (None off dedup routes), so the buffer can drop the rows of a copy it already holds.
    reading_identities: list[int | None] = field(default_factory=list)
    quarantine_identities: list[int | None] = field(default_factory=list)

    @property
    def reading_count(self) -> int:
        return int(self.readings.num_rows)

    @property
    def quarantine_count(self) -> int:
        return int(self.quarantine.num_rows)
