"""Soak: run the gateway for a set time under steady load with faults injected, then count.

Starts a private Mosquitto, Tansu (Kafka) and fakesnow (Snowflake), runs `edge-gateway run` as a
child process with a Kafka sink behind a TCP proxy and a Snowflake sink, publishes readings 0, 1,
2, ... at a steady rate, and every --fault-every seconds injects the next fault in turn:
- the uplink cut for a while;
- a broker restart (graceful: it saves first);
- a broker SIGKILL with persistence: it restores its last save and delivers again, as new, what
  the gateway acked since (the soak's route has a dedup_window: its payloads are sequence
  numbers);
- the broker's session lost: SIGKILL and its persistence file deleted;
- poison device times (`{"ts": 1e20}` and the like), which must be quarantined;
- in the first third of the run only (so memory can be watched on one process for the rest):
  kill -9 of the gateway, and a backlog of 70,000 readings (past the 65,535 packet ids) queued
  while the gateway is down, drained through a broker restart.
The broker faults that lose its state wait until it has acknowledged and handed over what the
publisher sent: what a crashed broker itself loses is not the gateway's to count. Prints the
gateway's RSS over time; at the end counts every reading the broker acknowledged in the buffer,
in Kafka and in Snowflake. The last line is

    soak minutes=<n> lost=<n> doubled=<n> rss_start_mb=<n> rss_end_mb=<n>

Usage: python bench/soak.py --minutes 30 [--rate 300] [--fault-every 60]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import snowflake.connector
import yaml
from confluent_kafka import Consumer

from gateway.buffer.connection import connect
from gateway.services import free_port
from gateway.services.fakesnow import FakeSnow
from gateway.services.mosquitto import Mosquitto
from gateway.services.tansu import Tansu
from gateway.sinks.kafka import partitions_from_start, read_to_end
from gateway.sqlclient import query, running_api
from gateway.testing import publisher, wait_until

TOPIC_PREFIX = "soak"


class Proxy:
    """127.0.0.1:port -> target port; `cut()` drops every connection and refuses new ones."""

    def __init__(self, target: int, port: int | None = None) -> None:
        self.port = port or free_port()
        self.target = target
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                return
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
            # shutdown() wakes the thread blocked in accept(); close() alone would not, and
            # the port would stay taken.
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            server.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


class Load:
    """Publishes the values 0, 1, 2, ... at `rate` per second until stopped."""

    def __init__(self, broker: Mosquitto, rate: float) -> None:
        self.rate = rate
        self.client = publisher(broker.host, broker.port, client_id="soak-load")
        self.infos: list[Any] = []
        self._stop = threading.Event()
        self.paused = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        i = 0
        while not self._stop.is_set():
            due = start + i / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
                continue
            if self.paused.is_set() or not self.client.is_connected():  # catch up after
                self._stop.wait(0.1)
                continue
            topic = f"sensors/soak/dev{i % 50}/seq"
            # QoS 2 to the broker: a publisher's own retry across a broker restart must not
            # turn into a second message (QoS 1 would allow that, before the gateway sees it).
            self.infos.append(self.client.publish(topic, str(i), qos=2))
            i += 1

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def acked(self) -> set[int]:
        return {i for i, info in enumerate(list(self.infos)) if _published(info)}


BURST_BASE = 10_000_000  # values of the backlog bursts, apart from the steady load's


def publish_burst(broker: Mosquitto, first: int, count: int) -> set[int]:
    """Publish `count` values from `first` as fast as the broker takes them (QoS 1, in chunks:
    the publisher's packet ids are 16 bits too); returns the values it acknowledged."""
    client = publisher(broker.host, broker.port, client_id=f"soak-burst-{first}")
    acked: set[int] = set()
    for start in range(first, first + count, 20_000):
        infos = {
            value: client.publish(f"sensors/soak/burst{value % 50}/seq", str(value), qos=1)
            for value in range(start, min(start + 20_000, first + count))
        }
        wait_until(lambda: all(_published(i) for i in infos.values()), timeout=120)  # noqa: B023
        acked |= {value for value, info in infos.items() if _published(info)}
    client.disconnect()
    client.loop_stop()
    return acked


POISON_TIMES: list[Any] = [1e20, 3e17, "9999-12-31T23:59:59-12:00"]


def publish_poison(broker: Mosquitto, round_: int) -> int:
    """Impossible device times, each payload new (`n`): the soak's route takes a repeated
    payload for a broker's copy."""
    client = publisher(broker.host, broker.port, client_id="soak-poison")
    infos = [
        client.publish(
            "sensors/soak/poison/temp", json.dumps({"ts": ts, "value": 1, "n": round_}), qos=1
        )
        for ts in POISON_TIMES
    ]
    wait_until(lambda: all(_published(i) for i in infos), timeout=30)
    client.disconnect()
    client.loop_stop()
    return len(infos)


def quarantined_times(buffer: Path) -> int:
    con = connect(buffer, read_only=True, lock_wait=30.0)
    try:
        rows = con.execute(
            "SELECT count(*) FROM quarantine WHERE reason LIKE '%impossible device time%'"
        ).fetchall()
    finally:
        con.close()
    return int(rows[0][0])


def snowflake_values(server: FakeSnow, schema: str) -> Counter[int]:
    con = snowflake.connector.connect(**server.connection_args(), database="EDGE", schema=schema)
    try:
        cursor = con.cursor().execute("SELECT value FROM readings")
        rows = cursor.fetchall() if cursor is not None else []
    finally:
        con.close()
    return Counter(int(v) for (v,) in rows)


def _published(info: Any) -> bool:
    try:
        return bool(info.is_published())
    except RuntimeError:  # queued while the broker was away; paho resends it on reconnect
        return False


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory; field RssAnon leaves out pages of shared libraries as they are touched."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def memory_breakdown(buffer: Path) -> str:
    """DuckDB's and Arrow's share of the gateway's memory, from its /metrics (MB)."""
    url = running_api(buffer)
    if url is None:
        return "duckdb_mb=? arrow_mb=? recycles=?"
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return "duckdb_mb=? arrow_mb=? recycles=?"
    duckdb_bytes = arrow_bytes = recycles = 0.0
    for line in text.splitlines():
        if line.startswith("edge_gateway_buffer_memory_bytes{"):
            duckdb_bytes += float(line.rsplit(" ", 1)[1])
        elif line.startswith("edge_gateway_arrow_allocated_bytes "):
            arrow_bytes = float(line.rsplit(" ", 1)[1])
        elif line.startswith('edge_gateway_buffer_reopens_total{reason="recycle"}'):
            recycles = float(line.rsplit(" ", 1)[1])
    return (
        f"duckdb_mb={duckdb_bytes / 2**20:.1f} arrow_mb={arrow_bytes / 2**20:.1f} "
        f"recycles={recycles:.0f}"
    )


def kafka_values(bootstrap: str) -> tuple[Counter[int], int]:
    """Every reading's value in Kafka, and how many offsets below each partition's end were
    never returned (a gap means the broker lost or hid records it had acknowledged)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "soak-check",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    values: Counter[int] = Counter()
    seen: dict[tuple[str, int], set[int]] = {}
    try:
        starts = partitions_from_start(consumer, TOPIC_PREFIX)
        for msg in read_to_end(consumer, starts, timeout=300):
            values[int(json.loads(msg.value() or b"{}")["value"])] += 1
            where = (str(msg.topic()), int(msg.partition() or 0))
            seen.setdefault(where, set()).add(int(msg.offset() or 0))
        gaps = sum(max(offsets) + 1 - min(offsets) - len(offsets) for offsets in seen.values())
        return values, gaps
    finally:
        consumer.close()


def buffer_values(buffer: Path) -> Counter[int]:
    con = connect(buffer, read_only=True, lock_wait=30.0)
    try:
        rows = con.execute("SELECT value FROM readings WHERE metric = 'seq'").fetchall()
    finally:
        con.close()
    return Counter(int(v) for (v,) in rows)


def describe_missing(buffer: Path, values: list[int]) -> None:
    """Where the readings missing upstream sit in the buffer: one span of positions (a batch)
    or scattered, and when they were committed; to line up with the gateway's log."""
    con = connect(buffer, read_only=True, lock_wait=30.0)
    try:
        rows = con.execute(
            "SELECT min(id), max(id), count(*), min(ingest_time), max(ingest_time), "
            "count(DISTINCT device) FROM readings WHERE metric = 'seq' AND value IN "
            "(SELECT unnest(?::DOUBLE[]))",
            [values],
        ).fetchall()
    finally:
        con.close()
    first, last, count, since, until, devices = rows[0]
    print(
        f"missing upstream: values {values[:10]}{'...' if len(values) > 10 else ''}; "
        f"buffer positions {first}..{last} ({count} rows, {devices} devices), "
        f"committed {since} .. {until}"
    )


def shipped_position(buffer: Path) -> tuple[int, int]:
    table = query(
        buffer,
        "SELECT (SELECT coalesce(max(id), 0) FROM readings) AS head, "
        "(SELECT coalesce(min(position), 0) FROM sink_cursors WHERE stream = 'readings') AS pos",
    )
    row = table.to_pylist()[0]
    return int(row["head"]), int(row["pos"])


WINDOW = 5  # samples per median at either end of the memory comparison


def start_and_end(samples: list[tuple[float, float]]) -> tuple[float, float]:
    """Medians of the first WINDOW samples from one minute in, and of the last WINDOW."""
    warm = [mb for t, mb in samples if t >= samples[0][0] + 60] or [mb for _, mb in samples]
    return statistics.median(warm[:WINDOW]), statistics.median(warm[-WINDOW:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=300.0, help="readings per second")
    parser.add_argument("--fault-every", type=float, default=60.0, help="seconds between faults")
    parser.add_argument("--sample-every", type=float, default=30.0, help="seconds between RSS")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    buffer = workdir / "buffer.duckdb"
    duration = args.minutes * 60
    uplink_port = free_port()
    # Tansu advertises the proxy's address, so that every connection the producer makes (not
    # only the bootstrap one) goes through the proxy and is cut with it.
    with (
        Mosquitto(persistence=True, workdir=workdir / "mosquitto") as broker,
        Tansu(advertised_port=uplink_port) as kafka,
        FakeSnow() as warehouse,
    ):
        warehouse.create_database("EDGE")
        proxy = Proxy(kafka.port, uplink_port)
        proxy.start()
        config = workdir / "gateway.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "gateway_id": "soak",
                    "mqtt": {
                        "host": broker.host,
                        "port": broker.port,
                        "client_id": "gw-soak",
                        "subscriptions": [{"topic": "sensors/#", "qos": 1}],
                        "reconnect": {"min_delay": "200ms", "max_delay": "2s"},
                    },
                    "buffer": {"path": str(buffer)},
                    # The payloads are sequence numbers: a copy is what a rolled-back broker
                    # delivers again (docs/architecture.md).
                    "routes": [
                        {"pattern": "sensors/{site}/{device}/{metric}", "dedup_window": "1h"}
                    ],
                    "api": {"port": 0},
                    "sinks": [
                        {
                            "type": "kafka",
                            "name": "uplink",
                            "bootstrap_servers": kafka.bootstrap_servers,
                            "topic": f"{TOPIC_PREFIX}.{{site}}",
                            "alerts_topic": f"{TOPIC_PREFIX}-alerts",
                            "batching": {"max_rows": 5000, "max_age": "200ms"},
                            "retry": {"min_delay": "200ms", "max_delay": "2s"},
                            "client": {"reconnect.backoff.max.ms": "2000"},
                        },
                        {
                            "type": "snowflake",
                            "name": "warehouse",
                            "account": warehouse.account,
                            "user": warehouse.user,
                            "password": "${FAKESNOW_PASSWORD}",
                            "database": "EDGE",
                            "schema": "SOAK",
                            "host": warehouse.host,
                            "port": warehouse.port,
                            "protocol": "http",
                            "batching": {"max_rows": 5000, "max_age": "1s"},
                            "retry": {"min_delay": "200ms", "max_delay": "2s"},
                        },
                    ],
                    "log_level": "warning",
                }
            )
        )
        log = (workdir / "gateway.log").open("ab")

        def start_gateway() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "-c", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={
                    **os.environ,
                    "PYTHONUNBUFFERED": "1",
                    "FAKESNOW_PASSWORD": warehouse.password,
                },
            )

        gateway = start_gateway()
        if not wait_until((workdir / "buffer.duckdb.runtime.json").exists, 60):
            raise SystemExit("the gateway did not start; see " + str(workdir / "gateway.log"))
        time.sleep(1.0)  # subscribed
        load = Load(broker, args.rate).start()
        started = time.monotonic()
        restarts = broker_restarts = outages = broker_kills = sessions_lost = backlogs = 0
        poison_sent = 0
        burst_acked: set[int] = set()
        samples: list[tuple[float, float]] = []
        anon: list[tuple[float, float]] = []
        faults = ["uplink", "broker", "backlog", "broker_kill", "poison", "kill", "session_lost"]
        restarting = {"kill", "backlog"}  # new gateway processes: first third only

        def quiesce() -> None:
            """Pause the load until the broker acknowledged it and the gateway committed it
            (a broker that loses its state loses what it held; that is not ours to count)."""
            load.paused.set()
            wait_until(lambda: len(load.acked()) == len(load.infos), timeout=60)
            expected = len(load.infos) + len(burst_acked)
            wait_until(lambda: shipped_position(buffer)[0] >= expected, timeout=120)
            time.sleep(2.0)  # the broker's autosave (every second) has the handover

        next_fault, next_sample, fault_index = started + args.fault_every, started, 0
        arenas = os.environ.get("MALLOC_ARENA_MAX", "default")
        print(
            f"soak: {args.minutes} min at {args.rate}/s, MALLOC_ARENA_MAX={arenas}, "
            f"workdir {workdir}",
            flush=True,
        )
        while (now := time.monotonic()) < started + duration:
            if gateway.poll() is not None:  # no fault of ours: the gateway gave up by itself
                load.stop()
                tail = (workdir / "gateway.log").read_text(errors="replace")[-2000:]
                raise SystemExit(
                    f"soak: the gateway exited with code {gateway.returncode} after "
                    f"{now - started:.0f}s; its log ends:\n{tail}"
                )
            if now >= next_sample:
                rss = rss_mb(gateway.pid)
                samples.append((now - started, rss))
                anon.append((now - started, rss_mb(gateway.pid, "RssAnon")))
                print(
                    f"t={now - started:6.0f}s rss_mb={rss:6.1f} anon_mb={anon[-1][1]:6.1f} "
                    f"{memory_breakdown(buffer)} published={len(load.infos)} "
                    f"restarts={restarts} broker_restarts={broker_restarts} outages={outages}",
                    flush=True,
                )
                next_sample += args.sample_every
            if now >= next_fault:
                fault = faults[fault_index % len(faults)]
                fault_index += 1
                while fault in restarting and now - started > duration / 3:
                    fault = faults[fault_index % len(faults)]
                    fault_index += 1
                if fault == "uplink":
                    proxy.cut()
                    time.sleep(min(20.0, args.fault_every / 3))
                    proxy.start()
                    outages += 1
                elif fault == "broker":
                    broker.stop()
                    time.sleep(3.0)
                    broker.start()
                    broker_restarts += 1
                elif fault == "broker_kill":
                    quiesce()
                    broker.kill()  # restored from its last save: the gateway's acks since
                    time.sleep(1.0)  # then come back as new messages
                    broker.start()
                    load.paused.clear()
                    broker_kills += 1
                elif fault == "session_lost":
                    quiesce()
                    broker.kill()
                    (broker.workdir / "mosquitto.db").unlink(missing_ok=True)
                    broker.start()
                    load.paused.clear()
                    sessions_lost += 1
                elif fault == "poison":
                    poison_sent += publish_poison(broker, fault_index)
                elif fault == "backlog":
                    gateway.send_signal(signal.SIGKILL)
                    gateway.wait(10)
                    first = BURST_BASE + backlogs * 100_000
                    burst_acked |= publish_burst(broker, first, 70_000)
                    gateway = start_gateway()
                    time.sleep(3.0)  # into the drain
                    broker.stop()
                    broker.start()
                    restarts += 1
                    backlogs += 1
                    samples.clear()
                    anon.clear()
                else:
                    gateway.send_signal(signal.SIGKILL)
                    gateway.wait(10)
                    gateway = start_gateway()
                    restarts += 1
                    # A new process: memory is watched from its own start.
                    samples.clear()
                    anon.clear()
                next_fault += args.fault_every
            time.sleep(0.2)
        load.stop()
        if not wait_until(lambda: len(load.acked()) == len(load.infos), timeout=120):
            print("warning: the broker did not acknowledge every reading", flush=True)
        acked = load.acked() | burst_acked
        rss_end = rss_mb(gateway.pid)
        anon_end = rss_mb(gateway.pid, "RssAnon")

        def all_shipped() -> bool:
            head, position = shipped_position(buffer)
            return head >= len(acked) and position >= head

        caught_up = wait_until(all_shipped, timeout=300, interval=1.0)
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(60)
        log.close()
        in_kafka, offset_gaps = kafka_values(kafka.bootstrap_servers)
        in_buffer = buffer_values(buffer)
        in_snowflake = snowflake_values(warehouse, "SOAK")
        poison_quarantined = quarantined_times(buffer)
        proxy.cut()
    lost = len(acked - set(in_kafka))
    doubled = sum(n - 1 for n in in_kafka.values() if n > 1)
    buffer_lost = len(acked - set(in_buffer))
    buffer_doubled = sum(n - 1 for n in in_buffer.values() if n > 1)
    sf_lost = len(acked - set(in_snowflake))
    sf_doubled = sum(n - 1 for n in in_snowflake.values() if n > 1)
    # Memory is compared from one minute into the last gateway process's life (imports and
    # first batches warm up before that) to its end, each as the median of WINDOW samples: RSS
    # saws up and down by several percent between the buffer's recycles, outages and restarts.
    samples.append((time.monotonic() - started, rss_end))
    anon.append((time.monotonic() - started, anon_end))
    rss_start, rss_end = start_and_end(samples)
    anon_start, anon_end = start_and_end(anon)
    print(f"caught up: {caught_up}; readings acknowledged by the broker: {len(acked)}")
    print(f"buffer: lost={buffer_lost} doubled={buffer_doubled}")
    print(f"kafka: lost={lost} doubled={doubled} offset_gaps={offset_gaps}")
    print(f"snowflake: lost={sf_lost} doubled={sf_doubled}")
    print(f"poison device times: sent={poison_sent} quarantined={poison_quarantined}")
    if lost:
        describe_missing(buffer, sorted(acked - set(in_kafka)))
    print(
        f"faults survived: gateway restarts={restarts} (backlogs of 70,000: {backlogs}) "
        f"broker restarts={broker_restarts} broker kills={broker_kills} "
        f"sessions lost={sessions_lost} uplink outages={outages}"
    )
    growth = (rss_end - rss_start) / rss_start * 100 if rss_start else 0.0
    print(
        f"rss growth over the last process (medians of {WINDOW} samples): {growth:.1f}% "
        f"(anonymous memory {anon_start:.0f} -> {anon_end:.0f} MB)"
    )
    print(
        f"soak minutes={round(args.minutes)} lost={lost + buffer_lost + sf_lost} "
        f"doubled={doubled + buffer_doubled + sf_doubled} rss_start_mb={round(rss_start)} "
        f"rss_end_mb={round(rss_end)}"
    )


if __name__ == "__main__":
    main()
