"""Drain benchmark: one million buffered readings shipped to Kafka (Tansu) and to Snowflake
(fakesnow server) by the gateway's forwarders, each beside a ceiling measured in the same run.

Kafka ceiling: a bare confluent-kafka idempotent producer (acks=all, zstd) sending the same
JSON values, keys and event-id headers, already encoded. Snowflake ceiling: the bare connector
doing PUT + COPY INTO of the same rows as Parquet files of the same batch size, already written.
The gateway's figures come from a whole gateway (gateway/app.py's `Gateway`, what `edge-gateway
run` starts, connected to a private Mosquitto) opened on the filled buffer with one sink: from
the moment it is up until the sink's cursor reached the last reading, so they include reading
the buffer, encoding, recording attempts, advancing the cursor and telemetry's send timing.

Last line: `drain kafka_ev_per_s=<n> kafka_ratio=<x> snowflake_ev_per_s=<n> snowflake_ratio=<x>`
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import snowflake.connector
from confluent_kafka import Producer

from gateway.buffer.outbox import rows_after
from gateway.buffer.store import BufferStore
from gateway.config import ApiConfig, BufferConfig, GatewayConfig, MqttConfig
from gateway.model import DECODED_QUARANTINE_SCHEMA, DECODED_READINGS_SCHEMA, IngestBatch
from gateway.services.fakesnow import FakeSnow
from gateway.services.mosquitto import Mosquitto
from gateway.services.tansu import Tansu
from gateway.sinks.config import KafkaSinkConfig, SnowflakeSinkConfig
from gateway.sinks.records import RecordEncoder
from gateway.sinks.snowflake import SnowflakeSink
from gateway.testing import GatewayThread, wait_until

BATCH_ROWS = 50_000


def fill(store: BufferStore, total: int, devices: int) -> None:
    now = int(time.time() * 1e6)
    step = 50_000
    for start in range(0, total, step):
        n = min(step, total - start)
        ids = range(start, start + n)
        table = pa.table(
            {
                "event_time": pa.array([now + i for i in ids], pa.timestamp("us", tz="UTC")),
                "ingest_time": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
                "device": [f"dev{i % devices}" for i in ids],
                "metric": ["temperature"] * n,
                "value": [20 + (i % 100) / 10 for i in ids],
                "text": pa.nulls(n, pa.string()),
                "unit": ["°C"] * n,
                "topic": [f"sensors/site{i % 4}/dev{i % devices}/temperature" for i in ids],
                "tags": [json.dumps({"site": f"site{i % 4}"}) for i in ids],
            },
            schema=DECODED_READINGS_SCHEMA,
        )
        store.append(IngestBatch(table, DECODED_QUARANTINE_SCHEMA.empty_table()), [])


def kafka_ceiling(store: BufferStore, bootstrap: str, total: int) -> float:
    """A bare idempotent producer sending the same records, encoded before the clock starts."""
    encoder = RecordEncoder("bench", {"readings": "ceiling.{site}.{metric}"})
    with store.reading() as con:
        records = encoder.encode("readings", rows_after(con, "readings", 0, None, total))
    encoder.close()
    values = records.column("value").to_pylist()
    keys = records.column("key").to_pylist()
    topics = records.column("topic").to_pylist()
    event_ids = [e.encode() for e in records.column("event_id").to_pylist()]
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "zstd",
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    for topic in set(topics):  # create the topics before the clock starts
        producer.produce(topic, b"warm-up")
    producer.flush(30)
    started = time.perf_counter()
    for topic, value, key, event_id in zip(topics, values, keys, event_ids, strict=True):
        while True:
            try:
                producer.produce(topic, value, key, headers=[("event_id", event_id)])
                break
            except BufferError:
                producer.poll(0.05)
    remaining = producer.flush(120)
    elapsed = time.perf_counter() - started
    assert remaining == 0, f"{remaining} messages not delivered"
    return total / elapsed


def snowflake_ceiling(store: BufferStore, snow: FakeSnow, total: int, workdir: Path) -> float:
    """The bare connector: PUT + COPY INTO of the same rows as ready-made Parquet files."""
    config = snowflake_config(snow, "ceiling")
    shaper = SnowflakeSink(config, "bench")
    files = []
    for first in range(1, total + 1, BATCH_ROWS):
        with store.reading() as con:
            batch = rows_after(con, "readings", first - 1, first + BATCH_ROWS - 1, BATCH_ROWS)
        path = workdir / f"ceiling-{first:09d}.parquet"
        pq.write_table(shaper.parquet_table("readings", batch), path, compression="zstd")
        files.append(path)
    conn = snowflake.connector.connect(
        **snow.connection_args(), database="BENCH", schema=config.schema_
    )
    cur = conn.cursor()
    cur.execute("CREATE SCHEMA IF NOT EXISTS BENCH.CEILING")
    cur.execute("USE SCHEMA BENCH.CEILING")
    cur.execute("CREATE STAGE IF NOT EXISTS S")
    columns = ", ".join(f"{n} {t}" for n, t in shaper.columns_for("readings"))
    cur.execute(f"CREATE TABLE IF NOT EXISTS READINGS ({columns})")
    started = time.perf_counter()
    for path in files:
        cur.execute(f"PUT 'file://{path}' @S/ AUTO_COMPRESS=FALSE")
        cur.execute(
            f"COPY INTO READINGS FROM @S/{path.name} FILE_FORMAT=(TYPE=PARQUET) "
            "MATCH_BY_COLUMN_NAME=CASE_INSENSITIVE PURGE=TRUE"
        )
    elapsed = time.perf_counter() - started
    cur.execute("SELECT count(*) FROM READINGS")
    loaded = cur.fetchall()[0][0]
    assert loaded == total, f"ceiling loaded {loaded}"
    conn.close()
    return total / elapsed


def snowflake_config(snow: FakeSnow, schema: str) -> SnowflakeSinkConfig:
    return SnowflakeSinkConfig.model_validate(
        {
            "type": "snowflake",
            "name": "warehouse",
            "account": snow.account,
            "user": snow.user,
            "password": snow.password,
            "database": "BENCH",
            "schema": schema,
            "host": snow.host,
            "port": snow.port,
            "protocol": "http",
            "streams": ["readings"],
            "batching": {"max_rows": BATCH_ROWS},
        }
    )


def drain(
    buffer: Path, broker: Mosquitto, sink: KafkaSinkConfig | SnowflakeSinkConfig, total: int
) -> float:
    """A gateway on the filled buffer with this one sink: readings per second its cursor moved
    from the gateway being up until it reached the last reading."""
    config = GatewayConfig(
        gateway_id="bench",
        mqtt=MqttConfig(host="127.0.0.1", port=broker.port, client_id=f"drain-{sink.name}"),
        buffer=BufferConfig(path=buffer),
        sinks=[sink],
        api=ApiConfig(enabled=False),
        log_level="warning",
    )
    with GatewayThread(config) as gw:
        assert gw.gateway.shipping is not None
        forwarder = gw.gateway.shipping.forwarders[0]
        wait_until(forwarder.started.is_set, timeout=60, interval=0.005)
        started, start = time.perf_counter(), forwarder.position
        if not wait_until(lambda: forwarder.position >= total, timeout=600, interval=0.005):
            raise TimeoutError(f"{sink.name} shipped {forwarder.position} of {total}")
        rate = (total - start) / (time.perf_counter() - started)
        for (name, stream), sends in gw.gateway.telemetry.send_histograms().items():
            mean = sends.total / sends.n if sends.n else 0.0
            print(f"  {name} {stream}: {sends.n} sends, {mean * 1000:.0f} ms each on average")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--devices", type=int, default=1000)
    args = parser.parse_args()
    total = args.readings
    with (
        tempfile.TemporaryDirectory(prefix="drain-bench-") as tmp,
        Mosquitto(workdir=Path(tmp) / "broker") as broker,
        Tansu() as kafka,
        FakeSnow() as snow,
    ):
        workdir = Path(tmp)
        snow.create_database("BENCH")
        buffer = workdir / "buffer.duckdb"
        store = BufferStore(buffer)
        started = time.perf_counter()
        fill(store, total, args.devices)
        print(f"buffered {total:,} readings in {time.perf_counter() - started:.1f}s")
        kafka_max = kafka_ceiling(store, kafka.bootstrap_servers, total)
        print(f"kafka ceiling (bare idempotent producer, zstd): {kafka_max:,.0f} ev/s")
        snow_max = snowflake_ceiling(store, snow, total, workdir)
        print(f"snowflake ceiling (bare PUT + COPY of ready Parquet): {snow_max:,.0f} ev/s")
        store.close()  # the gateways below open the buffer themselves

        kafka_config = KafkaSinkConfig.model_validate(
            {
                "type": "kafka",
                "name": "kafka",
                "bootstrap_servers": kafka.bootstrap_servers,
                "topic": "edge.{site}.{metric}",
                "streams": ["readings"],
                "batching": {"max_rows": BATCH_ROWS},
            }
        )
        kafka_rate = drain(buffer, broker, kafka_config, total)
        print(
            f"kafka gateway drain: {kafka_rate:,.0f} ev/s ({kafka_rate / kafka_max:.2f} of ceiling)"
        )
        snow_rate = drain(buffer, broker, snowflake_config(snow, "GATEWAY"), total)
        print(
            f"snowflake gateway drain: {snow_rate:,.0f} ev/s "
            f"({snow_rate / snow_max:.2f} of ceiling)"
        )
    print(
        f"drain kafka_ev_per_s={kafka_rate:.0f} kafka_ratio={kafka_rate / kafka_max:.2f} "
        f"snowflake_ev_per_s={snow_rate:.0f} snowflake_ratio={snow_rate / snow_max:.2f}"
    )


if __name__ == "__main__":
    main()
