"""What arrives upstream: both Snowflake layouts, alerts as their own stream, Avro values, and
records refused for good landing in the dead-letter table."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pyarrow as pa
from sinkhelpers import (
    WriterThread,
    event_id_of,
    fill,
    kafka_config,
    kafka_messages,
    readings,
    ship,
    snowflake_config,
    snowflake_rows,
)

from gateway.buffer.store import BufferStore
from gateway.services.fakesnow import FakeSnow
from gateway.services.tansu import Tansu
from gateway.sinks.avro import SCHEMA_HEADER, SCHEMAS, decode
from gateway.sinks.records import RecordEncoder
from gateway.sinks.shipping import Shipping
from gateway.sinks.snowflake import TYPED_COLUMNS


def alerts(n: int) -> pa.Table:
    now = int(time.time() * 1e6)
    return pa.table(
        {
            "alert_time": pa.array([now + i for i in range(n)], pa.timestamp("us", tz="UTC")),
            "rule_id": ["freezer-warm"] * n,
            "device": [f"freezer{i % 2}" for i in range(n)],
            "metric": ["temperature"] * n,
            "severity": ["critical"] * n,
            "state": ["firing"] * n,
            "message": ["freezer above -10 C"] * n,
            "value": [-5.0] * n,
            "reading_event_id": [None] * n,
        }
    )


def test_typed_layout_loads_readings_and_alerts_into_their_own_tables(
    store: BufferStore, on_writer: WriterThread, fakesnow: FakeSnow
) -> None:
    fill(store, readings(500, site="cabin"))
    store.append_alerts(alerts(3))
    snow = snowflake_config(fakesnow)
    ship(Shipping([snow], "gw1", store, on_writer, lambda: store.next_reading_id - 1), store)

    rows = snowflake_rows(
        fakesnow,
        snow,
        "SELECT event_id, device, metric, value, unit, tags:site::varchar, gateway_id, "
        "event_time, ingest_time FROM readings ORDER BY event_time LIMIT 1",
    )
    event_id, device, metric, value, unit, site, gateway, event_time, _ingest = rows[0]
    assert (event_id, device, metric, value, unit, site, gateway) == (
        f"{store.buffer_uid}-1",
        "dev0",
        "temperature",
        0.0,
        "C",
        "cabin",
        "gw1",
    )
    assert event_time.tzinfo is not None
    assert snowflake_rows(fakesnow, snow, "SELECT count(*) FROM readings") == [(500,)]
    assert snowflake_rows(
        fakesnow, snow, "SELECT rule_id, severity, state, count(*) FROM alerts GROUP BY ALL"
    ) == [("freezer-warm", "critical", "firing", 3)]


def test_kafka_connector_layout_loads_record_metadata_and_content(
    store: BufferStore, on_writer: WriterThread, fakesnow: FakeSnow
) -> None:
    fill(store, readings(200))
    store.append_alerts(alerts(2))
    snow = snowflake_config(fakesnow, layout="kafka_connector", table="EDGE_READINGS")
    ship(Shipping([snow], "gw1", store, on_writer, lambda: store.next_reading_id - 1), store)

    rows = snowflake_rows(
        fakesnow,
        snow,
        "SELECT record_content:device::varchar, record_content:tags:site::varchar, "
        "record_metadata:headers:event_id::varchar, record_metadata:key::varchar "
        "FROM edge_readings ORDER BY record_metadata:offset::int LIMIT 1",
    )
    assert rows == [("dev0", "home", f"{store.buffer_uid}-1", "dev0")]
    assert snowflake_rows(fakesnow, snow, "SELECT count(*) FROM edge_readings") == [(200,)]
    assert snowflake_rows(
        fakesnow, snow, "SELECT count(*), min(record_content:rule_id::varchar) FROM alerts"
    ) == [(2, "freezer-warm")]


def test_alerts_travel_to_their_own_kafka_topic(
    store: BufferStore, on_writer: WriterThread, tansu: Tansu
) -> None:
    fill(store, readings(10))
    store.append_alerts(alerts(4))
    kafka = kafka_config(tansu.bootstrap_servers)
    ship(Shipping([kafka], "gw1", store, on_writer, lambda: store.next_reading_id - 1), store)
    messages = kafka_messages(tansu.bootstrap_servers, kafka.alerts_topic)
    docs = [json.loads(m.value()) for m in messages]
    assert sorted(d["event_id"] for d in docs) == [f"{store.buffer_uid}-a{i}" for i in range(1, 5)]
    assert {m.key().decode() for m in messages} == {"freezer0", "freezer1"}


def test_avro_messages_decode_with_the_schema_in_their_header(
    store: BufferStore, on_writer: WriterThread, tansu: Tansu
) -> None:
    fill(store, readings(300))
    kafka = kafka_config(tansu.bootstrap_servers, format="avro", streams=["readings"])
    ship(Shipping([kafka], "gw1", store, on_writer, lambda: store.next_reading_id - 1), store)
    messages = kafka_messages(tansu.bootstrap_servers, kafka.name)
    assert len(messages) == 300
    first = min(messages, key=lambda m: event_id_of(m).rsplit("-", 1)[1].zfill(9))
    schema: dict[str, Any] = json.loads(dict(first.headers())[SCHEMA_HEADER])
    assert schema == SCHEMAS["readings"]
    record = decode(first.value(), schema)
    assert record["event_id"] == f"{store.buffer_uid}-1"
    assert record["tags"] == {"site": "home"} and record["device"] == "dev0"
    assert record["event_time"].tzinfo is not None


def test_records_refused_for_good_land_in_the_dead_letter_table_and_the_rest_goes_on(
    store: BufferStore, on_writer: WriterThread, tansu: Tansu, fakesnow: FakeSnow
) -> None:
    fill(store, readings(100))
    fill(store, readings(1, start=100, text="x" * 20_000))  # position 101: too large for both
    fill(store, readings(99, start=101))
    kafka = kafka_config(
        tansu.bootstrap_servers, client={"message.max.bytes": "10000"}, streams=["readings"]
    )
    snow = snowflake_config(fakesnow, max_record_bytes=10_000, streams=["readings"])
    ship(Shipping([kafka, snow], "gw1", store, on_writer, lambda: store.next_reading_id - 1), store)

    dead = store.query(
        "SELECT sink, position, event_id, reason, record FROM dead_letters ORDER BY sink",
    ).to_pylist()
    assert [(d["sink"], d["position"]) for d in dead] == sorted(
        [(kafka.name, 101), (snow.name, 101)]
    )
    for d in dead:
        assert d["event_id"] == f"{store.buffer_uid}-101"
        assert json.loads(d["record"])["text"] == "x" * 20_000
    reasons = {d["sink"]: d["reason"] for d in dead}
    assert "too large" in reasons[kafka.name].lower()
    assert "over 10000 bytes" in reasons[snow.name]
    assert len(kafka_messages(tansu.bootstrap_servers, kafka.name)) == 199
    assert snowflake_rows(fakesnow, snow, "SELECT count(*) FROM readings") == [(199,)]
    assert store.get_cursor(kafka.name) == store.get_cursor(snow.name) == 200


def test_a_row_snowflake_refuses_is_found_by_splitting_and_dead_lettered(
    store: BufferStore, on_writer: WriterThread, fakesnow: FakeSnow
) -> None:
    """The table's VALUE column is narrower than one reading: COPY refuses the whole file."""
    snow = snowflake_config(fakesnow, streams=["readings"])
    snowflake_rows(fakesnow, snow, f"CREATE SCHEMA IF NOT EXISTS EDGE.{snow.schema_}")
    columns = ", ".join(
        f"{name} {'NUMBER(6,1)' if name == 'VALUE' else kind}"
        for name, kind in TYPED_COLUMNS["readings"]
    )
    snowflake_rows(fakesnow, snow, f"CREATE TABLE EDGE.{snow.schema_}.READINGS ({columns})")
    fill(store, readings(60))
    fill(store, readings(1, devices=1, start=12_345_678))  # position 61: value 12345678.0
    fill(store, readings(39, start=61))
    ship(Shipping([snow], "gw1", store, on_writer, lambda: store.next_reading_id - 1), store)

    dead = store.query("SELECT position, reason FROM dead_letters").to_pylist()
    assert len(dead) == 1 and dead[0]["position"] == 61
    assert "COPY refused the rows" in dead[0]["reason"]
    assert snowflake_rows(fakesnow, snow, "SELECT count(*), max(value) FROM readings") == [
        (99, 9.0)
    ]


def test_records_keep_the_batch_order_across_many_row_groups() -> None:
    """The encoder relies on DuckDB keeping insertion order (no ORDER BY): a batch of several
    row groups comes out row for row in its own order."""
    n = 300_000
    now = int(time.time() * 1e6)
    ids = list(range(n, 0, -1))  # descending: an ORDER BY id would reverse it
    batch = pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "event_id": [f"e{i}" for i in ids],
            "event_time": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
            "ingest_time": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
            "device": [f"dev{i % 7}" for i in ids],
            "metric": ["m"] * n,
            "value": [float(i) for i in ids],
            "text": pa.nulls(n, pa.string()),
            "unit": pa.nulls(n, pa.string()),
            "topic": ["t"] * n,
            "tags": pa.nulls(n, pa.string()),
        }
    )
    encoder = RecordEncoder("gw")
    try:
        records = encoder.encode("readings", batch)
    finally:
        encoder.close()
    assert records.column("id").to_pylist() == ids
    assert [json.loads(v)["value"] for v in records.column("value").to_pylist()[::997]] == [
        float(i) for i in ids[::997]
    ]


ENCODER_THREADS_PROBE = """
import os, time
import pyarrow as pa
from gateway.sinks.records import RecordEncoder

def threads():
    return len(os.listdir("/proc/self/task"))

now = int(time.time() * 1e6)
n = 200_000
batch = pa.table({
    "id": pa.array(range(n), pa.int64()), "event_id": [f"e{i}" for i in range(n)],
    "event_time": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
    "ingest_time": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
    "device": ["d"] * n, "metric": ["m"] * n, "value": [1.0] * n,
    "text": pa.nulls(n, pa.string()), "unit": pa.nulls(n, pa.string()), "topic": ["t"] * n,
    "tags": pa.nulls(n, pa.string()),
})
before = threads()
encoders = [RecordEncoder("gw"), RecordEncoder("gw", {"readings": "x.{metric}"})]
for encoder in encoders:
    assert encoder.encode("readings", batch).num_rows == n
print(threads() - before)
"""


def test_the_encoders_start_no_threads_of_their_own() -> None:
    """A small box counts threads: the encoders' in-memory database runs its queries on the
    calling thread (the sink's), whatever the number of sinks."""
    run = subprocess.run(
        [sys.executable, "-c", ENCODER_THREADS_PROBE], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) == 0
