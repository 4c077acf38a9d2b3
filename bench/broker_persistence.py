"""Broker persistence benchmark: what closing Mosquitto's rollback window costs the gateway.

A Mosquitto with `persistence true` that is SIGKILLed restores its last save on restart and
delivers again every message the gateway acked since then. `autosave_interval 30` (what
deploy/mosquitto.conf ships) saves every 30 s; `autosave_on_changes true` with
`autosave_interval N` saves after N changes instead (each ack is one, and so is each message
queued for a client), and each save writes the whole database (every queued and in-flight
message) and fsyncs it. Mosquitto reads one packet per connection per loop iteration and checks
for a save once per iteration, so with N=1 it saves after (nearly) every ack.

This measures the gateway, run as `edge-gateway run` runs it (`GatewayThread` -> `Gateway.run`,
in its own process), against a private persistent Mosquitto on 127.0.0.1 with each setting:

  (a) autosave_interval 30 (time-based, the shipped default): the ceiling;
  (b) autosave_on_changes true, autosave_interval 1000;
  (c) autosave_on_changes true, autosave_interval 100;
  (d) autosave_on_changes true, autosave_interval 1 (a save after every change).

Two loads. **live**: the gateway is connected while a publisher (another process) publishes N
QoS 1 messages as fast as the broker takes them. **backlog**: N messages are queued for the
gateway's session while it is away (loaded under (a); then the broker restarts with the setting
under test and restores them), and the gateway connects and drains them.

Two figures per run. `committed` is the gateway's readings committed to its buffer per second.
`done` counts a message only once the broker has also processed its ack (its stored-message
count, `$SYS/broker/store/messages/count`, published every second, is back where it started):
Mosquitto before 2.0.13 sends a restored backlog past max_inflight_messages, so the gateway can
commit a backlog long before the broker has worked through the acks, and until it has, a crash
still rolls them back and new messages wait behind the saves. A run ends when the broker has
processed every ack, or after --seconds; a run cut short reports the rate it reached by then.
Each line gives the ratio to (a) in the same run, the broker's saves during the run (counted in
its log), its largest save file, the most messages it held, and the load average.

Last line: `broker_persistence live_a=<n> ... backlog_d=<n> load1=<x>` (the `done` rates)
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import ApiConfig, BufferConfig, GatewayConfig, MqttConfig, Subscription
from gateway.services.mosquitto import Mosquitto
from gateway.testing import GatewayThread

TOPIC_FILTER = "sensors/#"
GATEWAY_ID = "bench-gateway"
STORE_TOPIC = "$SYS/broker/store/messages/count"
# Written after Mosquitto's own settings, so these win (the last value of an option counts).
SETTINGS: list[tuple[str, str, str]] = [
    ("a", "autosave_interval 30", "autosave_interval 30\n"),
    ("b", "on_changes, interval 1000", "autosave_on_changes true\nautosave_interval 1000\n"),
    ("c", "on_changes, interval 100", "autosave_on_changes true\nautosave_interval 100\n"),
    ("d", "on_changes, interval 1", "autosave_on_changes true\nautosave_interval 1\n"),
]
# Each save logs "Saving in-memory database to ..." at `information`; the $SYS tree every second.
BROKER_EXTRA = "log_type information\nsys_interval 1\n"
SAVE_LINE = re.compile(rb"Saving in-memory database")

Samples = list[tuple[float, int]]  # (time.monotonic(), count); the clock is shared by processes


@dataclass
class Result:
    done_rate: float  # messages committed and acked at the broker, per second
    committed_rate: float  # readings committed to the gateway's buffer, per second
    done: int
    committed: int
    seconds: float
    complete: bool  # every message committed and acked within the bound
    saves: int
    largest_save_mb: float
    peak_held: int  # the most messages the broker held (beyond its baseline)


def create_session(port: int) -> None:
    """Subscribe once with the gateway's client id and a persistent session, then leave: the
    broker keeps the subscription (and queues for it) before the gateway first connects."""
    done = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=GATEWAY_ID, clean_session=False)
    client.on_subscribe = lambda *args: done.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe(TOPIC_FILTER, qos=1)
    done.wait(10)
    client.disconnect()
    client.loop_stop()


def publish(
    port: int, count: int, devices: int, acked: Synchronized[int], started: Synchronized[float]
) -> None:
    """Publish `count` QoS 1 readings as fast as the broker takes them (a child process)."""
    # gateway.testing.publisher, but with paho's in-flight window unlimited (0) instead of 1,000:
    # with a window, paho walks every unacked message on each PUBACK, which caps a publisher at
    # about 6,000 msg/s with 1,000 in flight and 600 msg/s with 20,000 here. The loop below
    # keeps fewer than 30,000 unacked instead (paho's packet ids are 16 bits: under 65,535).
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    done = 0

    def on_publish(*args: object) -> None:
        nonlocal done
        done += 1
        if done % 200 == 0:
            acked.value = done

    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    started.value = time.monotonic()
    infos = []
    for i in range(count):
        device = i % devices
        payload = orjson.dumps({"value": round(20 + (i % 100) / 10, 1), "unit": "°C", "seq": i})
        infos.append(
            client.publish(f"sensors/site{device % 4}/dev{device}/temperature", payload, qos=1)
        )
        if len(infos) >= 20_000 and len(infos) % 10_000 == 0:
            infos[-20_000].wait_for_publish(3600)
    if infos:
        infos[-1].wait_for_publish(3600)
    acked.value = done
    client.disconnect()
    client.loop_stop()


def gateway_run(
    port: int,
    total: int,
    workdir: str,
    result: mp.Queue,  # type: ignore[type-arg]
    stop: Event,
) -> None:
    """The gateway in its own process: reports when it is connected, then its committed count
    (sampled every 10 ms) once it has committed `total` readings or `stop` is set; it stays
    connected, acking, until `stop` is set."""
    config = GatewayConfig(
        mqtt=MqttConfig(
            host="127.0.0.1",
            port=port,
            client_id=GATEWAY_ID,
            subscriptions=[Subscription(topic=TOPIC_FILTER, qos=1)],
        ),
        buffer=BufferConfig(path=Path(workdir) / "buffer.duckdb"),
        api=ApiConfig(enabled=False),
        log_level="warning",
    )
    gw = GatewayThread(config)
    gw.start(timeout=60)
    samples = [(time.monotonic(), gw.gateway.stats.readings)]
    result.put(samples[0])
    while samples[-1][1] < total and not stop.is_set():
        time.sleep(0.01)
        samples.append((time.monotonic(), gw.gateway.stats.readings))
    result.put(samples)
    stop.wait(3600)
    gw.stop()


class BrokerWatch:
    """The broker's stored-message count (from $SYS, every second), its saves (counted in its
    log) and the largest save file (sampled every 20 ms)."""

    def __init__(self, broker: Mosquitto) -> None:
        self.log = broker.log_path
        self.db = broker.workdir / "mosquitto.db"
        self.largest = 0
        self.store: Samples = []
        self._saves_before = self._saves()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-sys")
        self._client.on_message = self._on_message
        self._client.on_connect = lambda client, *args: client.subscribe(STORE_TOPIC)
        self._client.connect("127.0.0.1", broker.port)
        self._client.loop_start()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        # The retained value is current: a broker publishes its $SYS tree on its first loop
        # iteration, before it accepts this connection.
        self.store.append((time.monotonic(), int(msg.payload)))

    def _saves(self) -> int:
        return len(SAVE_LINE.findall(self.log.read_bytes())) if self.log.exists() else 0

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(FileNotFoundError):
                self.largest = max(self.largest, self.db.stat().st_size)

    def held(self) -> int | None:
        return self.store[-1][1] if self.store else None

    def wait_held(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while self.held() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        held = self.held()
        if held is None:
            raise SystemExit(f"no {STORE_TOPIC} from the broker")
        return held

    def finish(self) -> tuple[int, float]:
        self._client.disconnect()
        self._client.loop_stop()
        self._stop.set()
        self._thread.join()
        return self._saves() - self._saves_before, self.largest / 1e6


def wait_drained(
    watch: BrokerWatch,
    baseline: int,
    entered: int,
    total: int,
    deadline: float,
    pub_acked: Synchronized[int] | None = None,
) -> tuple[float, int, bool]:
    """Wait until the broker holds no more than it did before the run (every message it took
    has been committed and acked: the gateway acks only what it has committed), or the deadline.
    Returns the end time, the messages done and whether all `total` were. `entered`: messages
    the broker took before the run (the backlog); `pub_acked`: those it takes during it (live).
    The broker publishes its count once a second, so the end is the last sample above the
    baseline, at most a second before the drain ended (see `result_of`)."""
    margin = max(100, total // 1000)  # $SYS topics come and go
    while True:
        now = time.monotonic()
        taken = entered + (pub_acked.value if pub_acked is not None else 0)
        held = watch.held()
        if held is not None and taken >= total and held <= baseline + margin:
            above = [t for t, n in watch.store if n > baseline + margin]
            return max([0.0, *above[-1:]]), total, True
        if now >= deadline:
            return now, max(0, taken - max(0, (held or baseline) - baseline)), False
        time.sleep(0.02)


def start_gateway(port: int, total: int, workdir: Path) -> tuple[mp.Process, mp.Queue, Event]:  # type: ignore[type-arg]
    result: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    stop = mp.Event()
    workdir.mkdir()
    args = (port, total, str(workdir), result, stop)
    process = mp.Process(target=gateway_run, args=args)
    process.start()
    return process, result, stop


def stop_gateway(process: mp.Process, stop: Event, result: mp.Queue) -> Samples:  # type: ignore[type-arg]
    stop.set()
    committed: Samples = result.get(timeout=60)
    process.join(60)
    if process.is_alive():
        process.terminate()
        process.join(10)
    return committed


def run_live(broker: Mosquitto, total: int, devices: int, seconds: float, workdir: Path) -> Result:
    create_session(broker.port)
    watch = BrokerWatch(broker)
    baseline = watch.wait_held()
    gateway, result, stop = start_gateway(broker.port, total, workdir / "gateway")
    result.get(timeout=120)
    acked: Synchronized[int] = mp.Value("q", 0)
    started: Synchronized[float] = mp.Value("d", 0.0)
    pub = mp.Process(target=publish, args=(broker.port, total, devices, acked, started))
    pub.start()
    while not started.value and pub.is_alive():
        time.sleep(0.01)
    finished, done, complete = wait_drained(
        watch, baseline, 0, total, started.value + seconds, acked
    )
    saves, largest = watch.finish()
    if pub.is_alive():  # bounded by time: the broker took fewer than `total` in that time
        pub.terminate()
    pub.join(30)
    committed = stop_gateway(gateway, stop, result)
    if pub.exitcode not in (0, -15) or not started.value:  # -15: stopped at the time bound
        raise SystemExit(f"the publisher failed (exit code {pub.exitcode})")
    return result_of(
        total, committed, started.value, finished, done, complete, saves, largest, watch, baseline
    )


def run_backlog(
    broker: Mosquitto, config: str, total: int, devices: int, seconds: float, workdir: Path
) -> Result:
    # Queue the backlog under the time-based setting (with a save after every change, loading
    # 100,000 messages would itself take hours), then restart the broker with the setting under
    # test: a clean stop saves the queue and the start restores it.
    create_session(broker.port)
    acked: Synchronized[int] = mp.Value("q", 0)
    started: Synchronized[float] = mp.Value("d", 0.0)
    pub = mp.Process(target=publish, args=(broker.port, total, devices, acked, started))
    pub.start()
    pub.join()
    if pub.exitcode != 0 or acked.value != total:
        raise SystemExit(f"loading the backlog failed: {acked.value:,} of {total:,} acked")
    broker.stop()
    broker.extra_config = BROKER_EXTRA + config
    broker.start()
    watch = BrokerWatch(broker)
    baseline = watch.wait_held() - total
    gateway, result, stop = start_gateway(broker.port, total, workdir / "gateway")
    ready, _ = result.get(timeout=120)
    finished, done, complete = wait_drained(watch, baseline, total, total, ready + seconds)
    saves, largest = watch.finish()
    committed = stop_gateway(gateway, stop, result)
    return result_of(
        total, committed, ready, finished, done, complete, saves, largest, watch, baseline
    )


def result_of(
    total: int,
    committed: Samples,
    since: float,
    finished: float,
    done: int,
    complete: bool,
    saves: int,
    largest: float,
    watch: BrokerWatch,
    baseline: int,
) -> Result:
    start = next((r for t, r in committed if t >= since), committed[-1][1])
    commit_end, last = next(((t, r) for t, r in committed if r >= total), committed[-1])
    count = last - start
    commit_seconds = max(commit_end - since, 1e-9)
    if complete:  # the drain ended when the broker had its last ack, after the last commit
        finished = max(finished, commit_end)
    elapsed = max(finished - since, 1e-9)
    peak = max((n for _, n in watch.store), default=baseline) - baseline
    return Result(
        done / elapsed,
        count / commit_seconds,
        done,
        count,
        elapsed,
        complete,
        saves,
        largest,
        peak,
    )


def measure(variant: str, config: str, args: argparse.Namespace, workdir: Path) -> Result:
    # The backlog is loaded under (a); the setting under test applies from the restart on.
    broker_config = BROKER_EXTRA + (config if variant == "live" else SETTINGS[0][2])
    broker = Mosquitto(persistence=True, workdir=workdir / "broker", extra_config=broker_config)
    broker.start_timeout = 60.0  # restoring a large backlog takes a while
    with broker:
        if variant == "live":
            return run_live(broker, args.live_messages, args.devices, args.seconds, workdir)
        return run_backlog(
            broker, config, args.backlog_messages, args.devices, args.seconds, workdir
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live-messages", type=int, default=100_000)
    parser.add_argument("--backlog-messages", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0, help="the most one run takes")
    args = parser.parse_args()
    mp.set_start_method("spawn")
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-broker-persistence-") as tmp:
        for variant in ("live", "backlog"):
            ceiling = ceiling_committed = 0.0
            for key, label, config in SETTINGS:
                r = measure(variant, config, args, Path(tmp) / f"{variant}-{key}")
                if key == "a":
                    ceiling, ceiling_committed = r.done_rate, r.committed_rate
                figures[f"{variant}_{key}"] = r.done_rate
                ratio = r.done_rate / ceiling if ceiling else 0.0
                committed_ratio = r.committed_rate / ceiling_committed if ceiling_committed else 0
                load = " ".join(f"{x:.2f}" for x in os.getloadavg())
                cut = "" if r.complete else " (cut at the time bound)"
                print(
                    f"{variant:7s} ({key}) {label:25s} done {r.done_rate:8,.0f} msg/s "
                    f"ratio {ratio:5.3f} | committed {r.committed_rate:8,.0f} msg/s "
                    f"ratio {committed_ratio:5.3f} | {r.done:,} done, {r.committed:,} committed "
                    f"in {r.seconds:.1f} s{cut} | saves {r.saves:,}, largest "
                    f"{r.largest_save_mb:.1f} MB, peak held {r.peak_held:,} | load {load}",
                    flush=True,
                )
    summary = " ".join(f"{name}={rate:.0f}" for name, rate in figures.items())
    print(f"broker_persistence {summary} load1={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
