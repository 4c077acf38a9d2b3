"""Helpers for the sink tests: readings to buffer, sink configs against the local services,
readers that look at what arrived upstream, and a TCP proxy that can cut a sink off."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pyarrow as pa
import snowflake.connector
from confluent_kafka import Consumer

from gateway.buffer.store import BufferStore
from gateway.errors import SinkError, SinkRejectedError
from gateway.model import DECODED_QUARANTINE_SCHEMA, DECODED_READINGS_SCHEMA, IngestBatch
from gateway.services import free_port
from gateway.services.fakesnow import FakeSnow
from gateway.sinks.base import Attempt, Sink, WriteResult
from gateway.sinks.config import KafkaSinkConfig, SnowflakeSinkConfig
from gateway.sinks.forwarder import Forwarder
from gateway.sinks.kafka import partitions_from_start, read_to_end
from gateway.sinks.shipping import Shipping


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def readings(
    n: int, devices: int = 10, start: int = 0, site: str = "home", text: str | None = None
) -> pa.Table:
    """`n` readings over `devices` devices; the value counts up per device, so order shows."""
    now = int(time.time() * 1e6)
    i = range(start, start + n)
    return pa.table(
        {
            "event_time": pa.array([now + k for k in i], pa.timestamp("us", tz="UTC")),
            "ingest_time": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
            "device": [f"dev{k % devices}" for k in i],
            "metric": ["temperature"] * n,
            "value": [float(k // devices) for k in i],
            "text": [text] * n,
            "unit": ["C"] * n,
            "topic": [f"sensors/{site}/dev{k % devices}/temperature" for k in i],
            "tags": [json.dumps({"site": site})] * n,
        },
        schema=DECODED_READINGS_SCHEMA,
    )


def fill(store: BufferStore, table: pa.Table, batch_rows: int = 10_000) -> None:
    for offset in range(0, table.num_rows, batch_rows):
        part = table.slice(offset, batch_rows)
        store.append(IngestBatch(part, DECODED_QUARANTINE_SCHEMA.empty_table()), [])


@dataclass
class WriterThread:
    """The gateway's single buffer writer thread, for forwarders run outside a Gateway."""

    pool: ThreadPoolExecutor

    async def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)


def kafka_config(bootstrap: str, **overrides: Any) -> KafkaSinkConfig:
    values: dict[str, Any] = {
        "type": "kafka",
        "name": unique("kafka"),
        "bootstrap_servers": bootstrap,
        "batching": {"max_rows": 10_000, "max_age": "50ms"},
        "retry": {"min_delay": "100ms", "max_delay": "1s"},
        "delivery_timeout": "20s",
        "partitions": 3,
    }
    values["topic"] = f"{values['name']}.{{site}}.{{metric}}"
    values["alerts_topic"] = f"{values['name']}.alerts"
    values.update(overrides)
    return KafkaSinkConfig.model_validate(values)


def snowflake_config(server: FakeSnow, **overrides: Any) -> SnowflakeSinkConfig:
    values: dict[str, Any] = {
        "type": "snowflake",
        "name": unique("snow"),
        "account": server.account,
        "user": server.user,
        "password": server.password,
        "database": "EDGE",
        "schema": unique("S"),
        "host": server.host,
        "port": server.port,
        "protocol": "http",
        "batching": {"max_rows": 10_000, "max_age": "50ms"},
        "retry": {"min_delay": "100ms", "max_delay": "1s"},
        "login_timeout": 10,
    }
    values.update(overrides)
    return SnowflakeSinkConfig.model_validate(values)


def kafka_messages(bootstrap: str, topic_prefix: str) -> list[Any]:
    """Every message in the topics starting with `topic_prefix`, partition by partition, read by
    direct assignment (Tansu can stall consumer-group joins) up to each partition's end."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("check"),
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        starts = partitions_from_start(consumer, topic_prefix)
        return list(read_to_end(consumer, starts, timeout=60))
    finally:
        consumer.close()


def event_id_of(msg: Any) -> str:
    return str(dict(msg.headers())["event_id"].decode())


def snowflake_rows(server: FakeSnow, config: SnowflakeSinkConfig, sql: str) -> list[Any]:
    con = snowflake.connector.connect(
        **server.connection_args(), database=config.database, schema=config.schema_
    )
    try:
        cursor = con.cursor().execute(sql)
        assert cursor is not None
        return list(cursor.fetchall())
    finally:
        con.close()


def ship(shipping: Shipping, store: BufferStore, timeout: float = 60.0) -> None:
    """Run until every forwarder has confirmed everything in its stream."""

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(shipping.run(stop))
        deadline = time.monotonic() + timeout
        try:
            while not all(f.position >= f.head() for f in shipping.forwarders) or not all(
                f.started.is_set() for f in shipping.forwarders
            ):
                assert time.monotonic() < deadline, f"not shipped: {shipping.status()}"
                if task.done():
                    task.result()
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await task

    asyncio.run(run())


def run_until(
    forwarder: Forwarder, done: Callable[[], bool], seconds: float = 20.0, *, close: bool = False
) -> None:
    """Run one forwarder until `done()`, then stop it (and close its sink with `close`)."""

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(forwarder.run(stop))
        deadline = time.monotonic() + seconds
        try:
            while not done():
                if task.done():
                    task.result()  # the forwarder died: show why
                assert time.monotonic() < deadline, (
                    f"timed out at {forwarder.position}: {forwarder.stats}"
                )
                await asyncio.sleep(0.01)
        finally:
            stop.set()
            await task
            if close:
                await forwarder.sink.aclose()

    asyncio.run(main())


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class TcpProxy:
    """Forwards 127.0.0.1:port to a target; `cut()` drops every connection and refuses new ones
    (an uplink outage), `restore()` accepts again on the same port."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return self

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            # shutdown wakes the thread blocked in accept(); close alone would leave the
            # socket listening until that accept returns.
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            server.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def restore(self) -> None:
        self.start()


class RecordingSink(Sink):
    """An in-memory sink for forwarder tests: keeps every batch it confirmed; can be told to
    fail the next sends, or to refuse for good any batch holding given positions. The hooks
    keep their defaults."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.batches: list[tuple[int, int, int]] = []  # (first, last, rows) confirmed
        self.attempts: list[Attempt] = []
        self.fail_next = 0
        self.refuse: set[int] = set()
        self.down_after: int | None = None  # batches past this position fail (an outage)

    async def write_batch(self, batch: pa.Table, attempt: Attempt) -> WriteResult:
        self.attempts.append(attempt)
        if self.fail_next:
            self.fail_next -= 1
            raise SinkError(self.name, "upstream unreachable")
        if self.down_after is not None and attempt.last > self.down_after:
            raise SinkError(self.name, "upstream down")
        positions = set(batch.column("id").to_pylist())
        if positions & self.refuse:
            raise SinkRejectedError(self.name, "schema mismatch")
        self.batches.append((attempt.first, attempt.last, batch.num_rows))
        return WriteResult(bytes_sent=batch.nbytes)

    async def aclose(self) -> None:
        return None

    @property
    def positions(self) -> list[int]:
        return [p for first, last, _ in self.batches for p in range(first, last + 1)]


class SchemaRegistry:
    """A minimal Confluent-compatible schema registry (register and fetch by id) on loopback,
    standing in for the Java service, which does not run here."""

    def __init__(self) -> None:
        self.schemas: list[str] = []
        self.subjects: dict[str, int] = {}
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _json(self, payload: Any) -> None:
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                subject = self.path.split("/")[2]
                schema = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["schema"]
                if schema not in registry.schemas:
                    registry.schemas.append(schema)
                schema_id = registry.schemas.index(schema) + 1
                registry.subjects[subject] = schema_id
                self._json({"id": schema_id})

            def do_GET(self) -> None:
                schema_id = int(self.path.rsplit("/", 1)[1])
                self._json({"schema": registry.schemas[schema_id - 1]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def schema(self, schema_id: int) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/schemas/ids/{schema_id}") as response:
            return dict(json.loads(json.loads(response.read())["schema"]))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
