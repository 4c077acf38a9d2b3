"""DDL of the buffer's tables; `docs/sql.md` describes each column for people writing queries."""

from __future__ import annotations

SCHEMA_VERSION = "1"

DDL = [
    """CREATE TABLE IF NOT EXISTS meta (
        key VARCHAR PRIMARY KEY,
        value VARCHAR NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS readings (
        id BIGINT NOT NULL,
        event_id VARCHAR NOT NULL,
        event_time TIMESTAMPTZ NOT NULL,
        ingest_time TIMESTAMPTZ NOT NULL,
        device VARCHAR NOT NULL,
        metric VARCHAR NOT NULL,
        value DOUBLE,
        text VARCHAR,
        unit VARCHAR,
        topic VARCHAR NOT NULL,
        tags VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS quarantine (
        id BIGINT NOT NULL,
        received_at TIMESTAMPTZ NOT NULL,
        topic VARCHAR NOT NULL,
        payload BLOB NOT NULL,
        payload_bytes BIGINT NOT NULL,
        reason VARCHAR NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS alerts (
        id BIGINT NOT NULL,
        event_id VARCHAR NOT NULL,
        alert_time TIMESTAMPTZ NOT NULL,
        rule_id VARCHAR NOT NULL,
        device VARCHAR NOT NULL,
        metric VARCHAR,
        severity VARCHAR NOT NULL,
        state VARCHAR NOT NULL,
        message VARCHAR,
        value DOUBLE,
        reading_event_id VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS sink_cursors (
        sink VARCHAR NOT NULL,
        stream VARCHAR NOT NULL,
        position BIGINT NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (sink, stream))""",
    """CREATE TABLE IF NOT EXISTS state (
        owner VARCHAR NOT NULL,
        key VARCHAR NOT NULL,
        value VARCHAR NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (owner, key))""",
    """CREATE TABLE IF NOT EXISTS mqtt_inflight (
        mid INTEGER NOT NULL,
        topic VARCHAR NOT NULL,
        digest BIGINT NOT NULL,
        batch BIGINT NOT NULL)""",
    # Content identities (ingest/content.py) of recent messages on routes with a dedup window.
    """CREATE TABLE IF NOT EXISTS content_identities (
        digest BIGINT NOT NULL,
        expires_at DOUBLE NOT NULL)""",
    # Readings decoded from retained messages: the broker's stored state, delivered on
    # subscribing. Rules take them as known state, not news, live and in backtests alike.
    """CREATE TABLE IF NOT EXISTS retained_readings (
        id BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS counters (
        name VARCHAR PRIMARY KEY,
        value BIGINT NOT NULL)""",
    # The device registry (gateway/buffer/devices.py): one row per device, times are arrivals.
    """CREATE TABLE IF NOT EXISTS devices (
        device VARCHAR NOT NULL,
        first_seen TIMESTAMPTZ NOT NULL,
        last_seen TIMESTAMPTZ NOT NULL,
        messages BIGINT NOT NULL,
        readings BIGINT NOT NULL,
        quarantined BIGINT NOT NULL,
        availability VARCHAR,
        availability_since TIMESTAMPTZ,
        availability_changes BIGINT NOT NULL,
        model VARCHAR,
        vendor VARCHAR,
        routes VARCHAR[] NOT NULL)""",
    # Records a sink refused for good (too large, schema); the sink's cursor moved past them.
    """CREATE TABLE IF NOT EXISTS dead_letters (
        sink VARCHAR NOT NULL,
        stream VARCHAR NOT NULL,
        position BIGINT NOT NULL,
        event_id VARCHAR NOT NULL,
        rejected_at TIMESTAMPTZ NOT NULL,
        reason VARCHAR NOT NULL,
        record VARCHAR NOT NULL)""",
]

# Tables a buffer file written before they existed lacks until the gateway's next start creates
# them (CREATE TABLE IF NOT EXISTS); reading such a file treats them as empty.
ADDED_LATER = frozenset({"retained_readings", "content_identities", "devices"})

COUNTERS = (
    "readings_total",
    "quarantined_total",
    "duplicates_dropped_total",
    "empty_payloads_total",
    "purged_readings_total",
    "purged_quarantine_total",
    "purged_unsent_total",
    "purged_released_total",
    "alerts_total",
)
