"""Drain benchmark: one million buffered readings shipped to Kafka (Tansu) and to Snowflake
(fakesnow server) by the gateway's forwarders, each beside a ceiling measured in the same run.

Kafka ceiling: a bare confluent-kafka idempotent producer (acks=all, zstd) sending the same
JSON values, keys and event-id headers, already encoded; its clock starts when the producer
is made, as the gateway's sink makes its own inside the gateway's clock, and the topics of both
exist before either clock starts. Snowflake ceiling: the bare connector
doing PUT + COPY INTO of the same rows as Parquet files of the same batch size, already written.
The gateway's figures come from a whole gateway (gateway/app.py's `Gateway`, what `edge-gateway
run` starts, connected to a private Mosquitto) opened on the filled buffer with one sink: from
the moment it is up until the sink's cursor reached the last reading, so they include reading
the buffer, encoding, recording attempts, advancing the cursor and telemetry's send timing.
Ceiling and gateway alternate for `--rounds` rounds (each round's sinks have new names, so their
cursors start at the beginning); the best of each is compared.

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


def kafka_records(store: BufferStore, total: int) -> pa.Table:
    """The ceiling's records, encoded before any clock starts."""
    encoder = RecordEncoder("bench", {"readings": "ceiling.{site}.{metric}"})
    with store.reading() as con:
        records = encoder.encode("readings", rows_after(con, "readings", 0, None, total))
    encoder.close()
    return records


def create_topics(bootstrap: str, topics: set[str]) -> None:
    """Make topics before any clock starts (a first message creates each), so that neither the
    ceiling nor the gateway counts topic creation."""
    producer = Producer({"bootstrap.servers": bootstrap})
    for topic in sorted(topics):
        producer.produce(topic, b"warm-up")
    assert producer.flush(30) == 0, "could not create the topics"


def kafka_ceiling(records: pa.Table, bootstrap: str, total: int) -> float:
    """A bare idempotent producer sending the same records, already encoded. Its clock starts
    when it is made, as the gateway's starts before its sink makes its producer: both count the
    idempotent session's start (about half a second on Tansu), neither counts topic creation."""
    values = records.column("value").to_pylist()
    keys = records.column("key").to_pylist()
    topics = records.column("topic").to_pylist()
    event_ids = [e.encode() for e in records.column("event_id").to_pylist()]
    create_topics(bootstrap, set(topics))
    started = time.perf_counter()
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


def parquet_files(store: BufferStore, snow: FakeSnow, total: int, workdir: Path) -> list[Path]:
    """The ceiling's Parquet files, one per batch, written before any clock starts."""
    shaper = SnowflakeSink(snowflake_config(snow, "ceiling"), "bench")
    files = []
    for first in range(1, total + 1, BATCH_ROWS):
        with store.reading() as con:
            batch = rows_after(con, "readings", first - 1, first + BATCH_ROWS - 1, BATCH_ROWS)
        path = workdir / f"ceiling-{first:09d}.parquet"
        pq.write_table(shaper.parquet_table("readings", batch), path, compression="zstd")
        files.append(path)
    return files


def snowflake_ceiling(files: list[Path], snow: FakeSnow, total: int, schema: str) -> float:
    """The bare connector: PUT + COPY INTO of the same rows as ready-made Parquet files."""
    config = snowflake_config(snow, schema)
    shaper = SnowflakeSink(config, "bench")
    conn = snowflake.connector.connect(
        **snow.connection_args(), database="BENCH", schema=config.schema_
    )
    cur = conn.cursor()
    cur.execute(f"CREATE SCHEMA IF NOT EXISTS BENCH.{schema}")
    cur.execute(f"USE SCHEMA BENCH.{schema}")
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
    parser.add_argument("--rounds", type=int, default=3, help="ceiling and gateway alternate")
    args = parser.parse_args()
    total = args.readings
    best = {"kafka": 0.0, "kafka ceiling": 0.0, "snowflake": 0.0, "snowflake ceiling": 0.0}
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
        records = kafka_records(store, total)
        # The gateway's topics (its template is the ceiling's with another prefix) exist before
        # its clock starts, as the ceiling's do.
        ceiling_topics = set(records.column("topic").to_pylist())
        create_topics(
            kafka.bootstrap_servers, {"edge" + t[len("ceiling") :] for t in ceiling_topics}
        )
        files = parquet_files(store, snow, total, workdir)
        store.close()  # the gateways below open the buffer themselves

        for n in range(1, args.rounds + 1):
            # Each round's gateway has sinks of new names: their cursors start at the beginning.
            kafka_config = KafkaSinkConfig.model_validate(
                {
                    "type": "kafka",
                    "name": f"kafka{n}",
                    "bootstrap_servers": kafka.bootstrap_servers,
                    "topic": "edge.{site}.{metric}",
                    "streams": ["readings"],
                    "batching": {"max_rows": BATCH_ROWS},
                }
            )
            snow_config = snowflake_config(snow, f"GATEWAY{n}").model_copy(
                update={"name": f"warehouse{n}"}
            )
            figures = {
                "kafka ceiling": kafka_ceiling(records, kafka.bootstrap_servers, total),
                "kafka": drain(buffer, broker, kafka_config, total),
                "snowflake ceiling": snowflake_ceiling(files, snow, total, f"CEILING{n}"),
                "snowflake": drain(buffer, broker, snow_config, total),
            }
            print(f"round {n}: " + ", ".join(f"{k} {v:,.0f} ev/s" for k, v in figures.items()))
            for key, value in figures.items():
                best[key] = max(best[key], value)
    kafka_ratio = best["kafka"] / best["kafka ceiling"]
    snow_ratio = best["snowflake"] / best["snowflake ceiling"]
    print(
        f"best of {args.rounds}: kafka {best['kafka']:,.0f} ev/s beside a bare idempotent "
        f"producer's {best['kafka ceiling']:,.0f}; snowflake {best['snowflake']:,.0f} ev/s "
        f"beside bare PUT + COPY's {best['snowflake ceiling']:,.0f}"
    )
    print(
        f"drain kafka_ev_per_s={best['kafka']:.0f} kafka_ratio={kafka_ratio:.2f} "
        f"snowflake_ev_per_s={best['snowflake']:.0f} snowflake_ratio={snow_ratio:.2f}"
    )


if __name__ == "__main__":
    main()
