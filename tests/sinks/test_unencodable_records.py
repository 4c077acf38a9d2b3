"""Rows a sink cannot encode (event times past the year 9999, which the buffer's TIMESTAMPTZ
holds but ISO 8601 text, Avro's datetimes and Snowflake cannot) become dead letters in every
sink, and the rest is delivered: no retry forever, no crash."""

from __future__ import annotations

import json

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

from gateway.buffer.outbox import rows_after
from gateway.buffer.store import BufferStore
from gateway.services.fakesnow import FakeSnow
from gateway.services.tansu import Tansu
from gateway.sinks.base import Rejection
from gateway.sinks.config import KafkaSinkConfig, SnowflakeSinkConfig
from gateway.sinks.forwarder import dead_letter_rows
from gateway.sinks.shipping import Shipping

# `{"ts": 3e17}` (read as microseconds: the year 11476) and "9999-12-31T23:59:59-12:00"
# (10000-01-01 in UTC), as buffers written before the decoders checked times hold them.
IMPOSSIBLE_US = [300_000_000_000_000_000, 253_402_343_999_000_000]


def impossible(start: int) -> pa.Table:
    rows = readings(len(IMPOSSIBLE_US), start=start)
    index = rows.column_names.index("event_time")
    return rows.set_column(
        index, "event_time", pa.array(IMPOSSIBLE_US, pa.timestamp("us", tz="UTC"))
    )


def test_every_sink_dead_letters_the_rows_it_cannot_encode_and_delivers_the_rest(
    store: BufferStore, on_writer: WriterThread, tansu: Tansu, fakesnow: FakeSnow
) -> None:
    fill(store, readings(50))
    fill(store, impossible(50))  # positions 51 and 52
    fill(store, readings(48, start=52))
    fill(store, readings(1, start=100, text="x" * 20_000))  # 101: too large, in the same batch
    fill(store, readings(99, start=101))
    bad = {51, 52}
    typed = snowflake_config(fakesnow, streams=["readings"], max_record_bytes=10_000)
    connector = snowflake_config(
        fakesnow,
        streams=["readings"],
        max_record_bytes=10_000,
        layout="kafka_connector",
        table="EDGE_READINGS",
    )
    sinks: list[SnowflakeSinkConfig | KafkaSinkConfig] = [
        kafka_config(
            tansu.bootstrap_servers, streams=["readings"], client={"message.max.bytes": "10000"}
        ),
        kafka_config(
            tansu.bootstrap_servers,
            streams=["readings"],
            format="avro",
            client={"message.max.bytes": "10000"},
        ),
        typed,
        connector,
    ]
    ship(Shipping(sinks, "gw1", store, on_writer), store)

    dead = store.query("SELECT sink, position, reason, record FROM dead_letters").to_pylist()
    for config in sinks:
        mine = {d["position"]: d for d in dead if d["sink"] == config.name}
        assert sorted(mine) == [51, 52, 101], config.name
        for position in bad:
            assert "event_time" in mine[position]["reason"], mine[position]["reason"]
        assert json.loads(mine[51]["record"])["event_time"].startswith("11476-08-15T05:20:00")
        assert json.loads(mine[52]["record"])["event_time"].startswith("10000-01-01T11:59:59")
    expected = {f"{store.buffer_uid}-{i}" for i in range(1, 201)} - {
        f"{store.buffer_uid}-{i}" for i in (51, 52, 101)
    }
    for config in sinks[:2]:
        seen = [event_id_of(m) for m in kafka_messages(tansu.bootstrap_servers, config.name)]
        assert sorted(seen) == sorted(expected), config.name
    loaded = snowflake_rows(fakesnow, typed, "SELECT event_id FROM readings")
    assert sorted(e for (e,) in loaded) == sorted(expected)
    loaded = snowflake_rows(
        fakesnow, connector, "SELECT record_content:event_id::varchar FROM edge_readings"
    )
    assert sorted(e for (e,) in loaded) == sorted(expected)
    assert all(store.get_cursor(c.name) == 200 for c in sinks)


def test_dead_letter_rows_copes_with_a_batch_holding_impossible_times(
    store: BufferStore,
) -> None:
    """Another row of the batch is the dead letter; the batch's impossible times must not
    crash the conversion (this crashed the gateway, and again after each restart)."""
    fill(store, readings(3))
    fill(store, impossible(3))  # positions 4 and 5
    with store.reading() as con:
        batch = rows_after(con, "readings", 0, None, 10)
    rows = dead_letter_rows(
        "kafka", "readings", batch, [Rejection(2, "too large"), Rejection(5, "x")]
    )
    records = {
        p: json.loads(r)
        for p, r in zip(rows["position"].to_pylist(), rows["record"].to_pylist(), strict=True)
    }
    assert sorted(records) == [2, 5]
    assert records[5]["event_time"].startswith("10000-01-01T11:59:59")
    assert records[2]["device"] == "dev1"
