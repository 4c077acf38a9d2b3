"""Helpers for the fault suite: a steady publisher that knows which readings the broker
acknowledged, and counters that read back what reached the buffer, Kafka and Snowflake. The
gateway run as its own process (so it can be killed -9) is gateway.testing.GatewayProcess."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import snowflake.connector
import yaml
from confluent_kafka import Consumer

from gateway.buffer.connection import connect
from gateway.services.fakesnow import FakeSnow
from gateway.services.mosquitto import Mosquitto
from gateway.sinks.kafka import partitions_from_start, read_to_end
from gateway.testing import GatewayProcess as GatewayProcess  # noqa: PLC0414 (test_sink_down_at_cap imports it here)
from gateway.testing import publisher, wait_until


def fault_loops(default: int) -> int:
    """How many rounds a looping fault test runs: small in CI, FAULT_LOOPS=50 for a long run."""
    return max(1, int(os.environ.get("FAULT_LOOPS", default)))


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def write_config(
    tmp_path: Path,
    broker: Mosquitto,
    client_id: str,
    *,
    buffer: Path | None = None,
    sinks: list[dict[str, Any]] | None = None,
    retention: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    data: dict[str, Any] = {
        "gateway_id": "faulty",
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "client_id": client_id,
            "subscriptions": [{"topic": "sensors/#", "qos": 1}],
            "reconnect": {"min_delay": "100ms", "max_delay": "1s"},
        },
        "buffer": {"path": str(buffer or tmp_path / "buffer.duckdb"), "flush_interval": "20ms"},
        "api": {"port": 0},
        "sinks": sinks or [],
        "log_level": "info",
    }
    if retention is not None:
        data["buffer"]["retention"] = retention
    data.update(extra or {})
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class SteadyPublisher:
    """Publishes `sensors/plant/dev<k>/seq` with the values 0..total-1 (QoS 1) at a steady rate
    from a thread; `acked()` are the values the broker has confirmed holding."""

    def __init__(
        self, broker: Mosquitto, total: int, rate: float, devices: int = 20, qos: int = 1
    ) -> None:
        self.total = total
        self.rate = rate
        self.devices = devices
        self.qos = qos
        self.client = publisher(broker.host, broker.port, client_id=unique("steady"))
        self._infos: list[paho.MQTTMessageInfo] = []
        self._thread = threading.Thread(target=self._run, name="steady-publisher", daemon=True)
        self._stop = threading.Event()

    def _run(self) -> None:
        start = time.monotonic()
        for i in range(self.total):
            if self._stop.is_set():
                return
            due = start + i / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            topic = f"sensors/plant/dev{i % self.devices}/seq"
            self._infos.append(self.client.publish(topic, str(i), qos=self.qos))

    def start(self) -> SteadyPublisher:
        self._thread.start()
        return self

    def published(self) -> int:
        return len(self._infos)

    def acked(self) -> set[int]:
        return {i for i, info in enumerate(list(self._infos)) if info.is_published()}

    def wait_all_acked(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return wait_until(lambda: len(self.acked()) == self.total, timeout)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.client.disconnect()
        self.client.loop_stop()


def buffer_values(buffer: Path) -> Counter[int]:
    """How often each published value is in the (stopped) gateway's buffer."""
    con = connect(buffer, read_only=True, lock_wait=10.0)
    try:
        rows = con.execute("SELECT value FROM readings WHERE metric = 'seq'").fetchall()
    finally:
        con.close()
    return Counter(int(v) for (v,) in rows)


def doubled_in_buffer(buffer: Path, limit: int = 5) -> str:
    """The first doubled values with their positions and commit times, for a failure message:
    whether the copies straddle a reconnect is what tells the cause."""
    con = connect(buffer, read_only=True, lock_wait=10.0)
    try:
        rows = con.execute(
            "SELECT value, list(id ORDER BY id), list(ingest_time ORDER BY id) FROM readings "
            "WHERE metric = 'seq' GROUP BY value HAVING count(*) > 1 ORDER BY value LIMIT ?",
            [limit],
        ).fetchall()
    finally:
        con.close()
    return "; ".join(
        f"value {int(v)} at positions {ids} committed {times}" for v, ids, times in rows
    )


def buffer_counters(buffer: Path) -> dict[str, int]:
    con = connect(buffer, read_only=True, lock_wait=10.0)
    try:
        return {str(k): int(v) for k, v in con.execute("FROM counters").fetchall()}
    finally:
        con.close()


def kafka_values(bootstrap: str, topic_prefix: str) -> Counter[int]:
    """Every `seq` reading's value in the topics starting with `topic_prefix`, read partition by
    partition by direct assignment (Tansu can stall consumer-group joins) to each one's end."""
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
        values: Counter[int] = Counter()
        for msg in read_to_end(consumer, starts, timeout=60):
            doc = json.loads(msg.value() or b"{}")
            if doc.get("metric") == "seq":  # the counted readings, not filler text
                values[int(doc["value"])] += 1
        return values
    finally:
        consumer.close()


def snowflake_values(server: FakeSnow, schema: str) -> Counter[int]:
    """Every reading's value in the table READINGS of `schema` (none before it exists)."""
    try:
        con = snowflake.connector.connect(
            **server.connection_args(), database="EDGE", schema=schema
        )
    except snowflake.connector.Error:
        return Counter()
    try:
        cursor = con.cursor().execute("SELECT value FROM readings")
        rows = cursor.fetchall() if cursor is not None else []
    except snowflake.connector.Error:
        return Counter()
    finally:
        con.close()
    return Counter(int(v) for (v,) in rows)


def lost_and_doubled(expected: set[int], seen: Counter[int]) -> tuple[int, int]:
    """Readings missing, and extra copies, against the set the broker acknowledged."""
    lost = len(expected - set(seen))
    doubled = sum(n - 1 for n in seen.values() if n > 1)
    return lost, doubled


def gateway_ready(buffer: Path) -> bool:
    """True once the gateway running on `buffer` answers /readyz: connected and subscribed."""
    import urllib.error
    import urllib.request

    from gateway.sqlclient import running_api

    url = running_api(buffer)
    if url is None:
        return False
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as answer:
            return bool(json.loads(answer.read())["ready"])
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return False
