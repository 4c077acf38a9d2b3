"""Footprint benchmark: what `edge-gateway run` costs on a small box, in one run.

Runs the real command (`python -m gateway run -c CONFIG`, the production composition root) as a
child process next to a private Mosquitto, and reads its /proc figures:

- idle: a gateway with no sinks and no rules, connected and waiting (RSS, threads);
- load: 100 rules and both sinks (Kafka on Tansu, Snowflake on fakesnow) shipping, while a
  load generator publishes a steady rate (default 10,000 msg/s): peak RSS, threads, and the
  readings committed per second beside the rate offered;
- cold start: from the process start to `/readyz` answering 200;
- `edge-gateway --help`: median wall time of several runs;
- installed size of the packages the gateway imports, from the virtualenv.

Each figure is printed beside its goal (docs/benchmarks.md, "Footprint"). Last line:
`footprint idle_rss_mb=<n> load_rss_mb=<n> threads=<n> cold_start_s=<x> help_s=<x> venv_mb=<n>`

RSS is printed whole and split: the private part (RssAnon) and the pages of shared libraries
and files mapped in (RssFile). The second counts DuckDB's and Arrow's code (about 100 MB once a
database is open), is shared with other processes and reclaimable, and varies from run to run
with what the page cache holds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from gateway.services.fakesnow import FakeSnow
from gateway.services.mosquitto import Mosquitto
from gateway.services.tansu import Tansu
from gateway.testing import wait_until
from simulators.load import LoadSpec, run_load

CORE = ["pyarrow", "duckdb", "paho-mqtt", "pydantic", "pydantic-core", "orjson", "typer", "rich"]
EXTRAS = ["confluent-kafka", "snowflake-connector-python", "botocore", "boto3", "cryptography"]


def proc_status(pid: int) -> dict[str, int]:
    figures: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                figures[key] = int(value.split()[0])
    return figures


def thread_names(pid: int) -> Counter[str]:
    """Threads by name (a trailing number dropped: `rdk:broker3` counts as `rdk:broker`)."""
    names: Counter[str] = Counter()
    for comm in Path(f"/proc/{pid}/task").glob("*/comm"):
        with contextlib.suppress(OSError):
            names[comm.read_text().strip().rstrip("0123456789_-")] += 1
    return names


def rules_file(path: Path, count: int) -> Path:
    rules: list[dict[str, Any]] = []
    for i in range(count):
        rules.append(
            {
                "id": f"hot-{i}",
                "select": {"metric": "value"},
                "trigger": {"type": "threshold", "above": 50 + i % 40, "hysteresis": 1},
                "actions": [{"log": {"message": "{device} above"}}],
            }
        )
    path.write_text(yaml.safe_dump({"rules": rules}))
    return path


def gateway_config(
    workdir: Path, broker: Mosquitto, extra: dict[str, Any], name: str
) -> tuple[Path, Path]:
    buffer = workdir / f"{name}.duckdb"
    config = workdir / f"{name}.yaml"
    data = {
        "gateway_id": f"footprint-{name}",
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "client_id": f"gw-footprint-{name}",
            "subscriptions": [{"topic": "sensors/#", "qos": 0}],
        },
        "buffer": {"path": str(buffer)},
        "api": {"port": 0},
        "log_level": "warning",
        **extra,
    }
    config.write_text(yaml.safe_dump(data))
    return config, buffer


class RunningGateway:
    def __init__(self, config: Path, buffer: Path, env: dict[str, str]) -> None:
        self.buffer = buffer
        self.log = config.with_suffix(".log").open("ab")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        )

    def api(self) -> str | None:
        runtime = self.buffer.with_name(self.buffer.name + ".runtime.json")
        try:
            return str(json.loads(runtime.read_text())["api"])
        except (OSError, ValueError, KeyError):
            return None

    def ready(self) -> bool:
        url = self.api()
        if url is None:
            return False
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def readings(self) -> int:
        url = self.api()
        assert url is not None
        with urllib.request.urlopen(url + "/api/status", timeout=5) as answer:
            return int(json.loads(answer.read())["ingest"]["readings"])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


def help_seconds(runs: int) -> float:
    command = [str(Path(sys.executable).with_name("edge-gateway")), "--help"]
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def installed_mb(names: list[str]) -> dict[str, float]:
    sizes: dict[str, float] = {}
    for name in names:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        total = 0
        for file in dist.files or []:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                total += path.stat().st_size
        sizes[name] = total / 1e6
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=10_000, help="messages per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the load run")
    parser.add_argument("--rules", type=int, default=100)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="footprint-"))
    with Mosquitto() as broker, Tansu() as kafka, FakeSnow() as warehouse:
        warehouse.create_database("EDGE")
        env = {"FAKESNOW_PASSWORD": warehouse.password}

        # -- idle, and the cold start to /readyz
        config, buffer = gateway_config(workdir, broker, {}, "idle")
        idle = RunningGateway(config, buffer, env)
        try:
            if not wait_until(idle.ready, 60, interval=0.02):
                raise SystemExit(f"the idle gateway did not get ready; see {config}.log")
            cold_start = time.monotonic() - idle.started
            time.sleep(5.0)
            idle_status = proc_status(idle.process.pid)
        finally:
            idle.stop()

        # -- under load, with rules and both sinks shipping
        sinks = [
            {
                "type": "kafka",
                "name": "uplink",
                "bootstrap_servers": kafka.bootstrap_servers,
                "topic": "footprint.{site}",
                "alerts_topic": "footprint-alerts",
            },
            {
                "type": "snowflake",
                "name": "warehouse",
                "account": warehouse.account,
                "user": warehouse.user,
                "password": "${FAKESNOW_PASSWORD}",
                "database": "EDGE",
                "schema": "FOOTPRINT",
                "host": warehouse.host,
                "port": warehouse.port,
                "protocol": "http",
            },
        ]
        rules = rules_file(workdir / "rules.yaml", args.rules)
        extra = {"sinks": sinks, "rules": {"files": [str(rules)]}}
        config, buffer = gateway_config(workdir, broker, extra, "load")
        loaded = RunningGateway(config, buffer, env)
        try:
            if not wait_until(loaded.ready, 60, interval=0.05):
                raise SystemExit(f"the loaded gateway did not get ready; see {config}.log")
            before = loaded.readings()
            peak_rss = peak_threads = 0
            peak_status: dict[str, int] = {}
            busiest: Counter[str] = Counter()

            def sample(elapsed: float, last: int, total: int, errors: int) -> None:
                nonlocal peak_rss, peak_status, peak_threads, busiest
                status = proc_status(loaded.process.pid)
                if status["VmRSS"] > peak_rss:
                    peak_rss, peak_status = status["VmRSS"], status
                if status["Threads"] > peak_threads:
                    peak_threads, busiest = status["Threads"], thread_names(loaded.process.pid)

            spec = LoadSpec(
                broker.host, broker.port, rate=args.rate, duration=args.seconds, payload="plain"
            )
            summary = run_load(spec, sample)
            time.sleep(2.0)  # the last batches commit
            committed = loaded.readings() - before
            load_status = proc_status(loaded.process.pid)
        finally:
            loaded.stop()

    help_s = help_seconds(7)
    core, extras = installed_mb(CORE), installed_mb(EXTRAS)
    idle_mb = idle_status["VmRSS"] / 1024
    load_mb = max(peak_rss, load_status["VmRSS"]) / 1024
    threads = max(peak_threads, load_status["Threads"])
    offered = summary.sent / summary.seconds
    idle_threads = idle_status["Threads"]
    print(f"idle       rss {idle_mb:6.1f} MB  threads {idle_threads:3d}   (goal <= 100 MB)")
    print(
        f"load       rss {load_mb:6.1f} MB  threads {threads:3d}   (goal <= 150 MB, <= 8 threads)"
        f"  {committed / summary.seconds:,.0f} readings/s committed of {offered:,.0f} offered"
    )
    peak = peak_status if peak_rss >= load_status["VmRSS"] else load_status
    for name, status in (("idle", idle_status), ("load", peak)):
        print(
            f"  {name} rss: {status['RssAnon'] / 1024:.0f} MB private (heap, Python objects, "
            f"buffers), {status['RssFile'] / 1024:.0f} MB of mapped library and file pages "
            f"(shared, reclaimable, more when the page cache holds the libraries)"
        )
    print("  threads  " + ", ".join(f"{name} {n}" for name, n in busiest.most_common()))
    print(f"cold start {cold_start:6.2f} s to /readyz")
    print(f"--help     {help_s:6.3f} s median of 7       (goal < 0.2 s)")
    print("installed  " + ", ".join(f"{n} {mb:.0f} MB" for n, mb in sorted(core.items())))
    print("  sinks    " + ", ".join(f"{n} {mb:.0f} MB" for n, mb in sorted(extras.items())))
    venv = sum(core.values()) + sum(extras.values())
    print(f"load average {os.getloadavg()[0]:.2f}")
    print(
        f"footprint idle_rss_mb={idle_mb:.0f} load_rss_mb={load_mb:.0f} threads={threads} "
        f"cold_start_s={cold_start:.2f} help_s={help_s:.3f} venv_mb={venv:.0f}"
    )


if __name__ == "__main__":
    main()
