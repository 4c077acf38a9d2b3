"""Rules benchmark: the pure engine's evaluations per second and memory per rule, and the live
latency from a reading published to Mosquitto to the command the gateway publishes back.

Ceilings measured in the same run:
- engine: a bare Python loop over the same columns doing one dict lookup and one comparison
  per (reading, rule) pair: what evaluating a threshold can at best cost in Python;
- latency: the broker round trip alone (publish -> subscriber receives), under the same load;
- peer: Node-RED 4 (bench/nodered.py; npm installs it into .bench/ on first use) on the same
  rule (a reading above 30 -> an MQTT command carrying its value), against its own private
  Mosquitto, under the same background load (QoS 0, 100 devices).

Last line: `rules evals_per_s=<n> kb_per_rule=<n> p50_ms=<x> p99_ms=<x> nodered_p50_ms=<x>
nodered_p99_ms=<x> broker_p99_ms=<x>` (evals_per_s with 100 rules; kb_per_rule with state for
100 devices per rule; latencies at `--load` msg/s with the gateway's 100 rules loaded).
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import random
import statistics
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pyarrow as pa
import yaml
from nodered import NodeRed, installed_version
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import (
    ApiConfig,
    BufferConfig,
    GatewayConfig,
    MqttConfig,
    RulesConfig,
    Subscription,
)
from gateway.rules.engine import RuleEngine
from gateway.rules.schema import LoadedRule, parse_rule_file
from gateway.rules.testing import R, readings
from gateway.services.mosquitto import Mosquitto
from gateway.testing import GatewayThread, wait_until

DEVICES = 100


def rule_set(count: int) -> list[LoadedRule]:
    """`count` rules over the temperature of every device: thresholds, some with hysteresis or
    `for`, and state rules, so each reading is evaluated by every rule."""
    rules: list[dict[str, Any]] = []
    for i in range(count):
        level = 20 + (i % 10)
        trigger: dict[str, Any] = {"type": "threshold", "above": level}
        if i % 3 == 1:
            trigger["hysteresis"] = 0.5
        if i % 5 == 2:
            trigger["for"] = "30s"
        rules.append(
            {
                "id": f"rule-{i}",
                "select": {"metric": "temperature"},
                "trigger": trigger,
                "actions": [{"mqtt": {"topic": "commands/{device}/fan", "payload": "ON"}}],
            }
        )
    return parse_rule_file({"rules": rules}, "bench")


def workload(batches: int, size: int, seed: int = 1) -> list[pa.Table]:
    rng = random.Random(seed)
    values = [25.0] * DEVICES
    out = []
    t = 1_700_000_000.0
    for b in range(batches):
        rows = []
        for _ in range(size):
            d = rng.randrange(DEVICES)
            values[d] = min(32.0, max(18.0, values[d] + rng.gauss(0, 0.3)))
            t += 0.001
            rows.append(R(t, f"dev{d}", "temperature", round(values[d], 2)))
        out.append(readings(rows, first_id=1 + b * size))
    return out


def engine_rate(rule_count: int, tables: list[pa.Table]) -> tuple[float, int]:
    engine = RuleEngine(rule_set(rule_count), allowed_lateness=2.0)
    engine.process(tables[0])  # warm the selection cache
    gc.collect()
    start = time.perf_counter()
    fired = 0
    for table in tables[1:]:
        fired += len(engine.process(table))
    elapsed = time.perf_counter() - start
    evaluations: int = sum(t.num_rows for t in tables[1:]) * rule_count
    return evaluations / elapsed, fired


def ceiling_rate(rule_count: int, tables: list[pa.Table]) -> float:
    """One dict lookup and one comparison per (reading, rule): the floor of any Python engine."""
    levels = [20.0 + (i % 10) for i in range(rule_count)]
    state: dict[tuple[str, int], bool] = {}
    start = time.perf_counter()
    for table in tables[1:]:
        devices = table.column("device").to_pylist()
        values = table.column("value").to_pylist()
        for device, value in zip(devices, values, strict=True):
            for i, level in enumerate(levels):
                key = (device, i)
                state[key] = value > level if key in state else False
    elapsed = time.perf_counter() - start
    rows: int = sum(t.num_rows for t in tables[1:])
    return rows * rule_count / elapsed


def memory_per_rule(rule_count: int, tables: list[pa.Table]) -> tuple[float, float]:
    """KB per rule once compiled, and with per-device state for all 100 devices."""
    loaded = rule_set(rule_count)
    gc.collect()
    tracemalloc.start()
    engine = RuleEngine(loaded, allowed_lateness=2.0)
    compiled = tracemalloc.get_traced_memory()[0]
    for table in tables[:3]:
        engine.process(table)
    with_state = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return compiled / rule_count / 1024, with_state / rule_count / 1024


PROBE_TOPIC = "sensors/home/probe/level"
COMMAND_TOPIC = "commands/bench/probe"
LATENCY_RULES = f"""
rules:
  - id: probe
    select: {{device: probe, metric: level}}
    trigger: {{type: threshold, above: 30}}
    actions:
      - mqtt: {{topic: "{COMMAND_TOPIC}", payload: "{{value}}", qos: 0}}
"""


def _client(port: int, client_id: str) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.max_inflight_messages_set(5000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


class Probe:
    """Publishes numbered hot readings, each after a cold one (so each is a crossing of the
    probe rule's `above: 30`), and times the command carrying the value back on `reply`. The
    value tells the probes apart: probe i is 31 + i / 1000 (the gateway's `{value}` keeps 3
    decimals); warm-up probes start at 32, so keep `--probes` below 1000."""

    def __init__(self, port: int, reply: str) -> None:
        self.sent: dict[int, float] = {}
        self.latencies: list[float] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.sub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{reply}")
        self.sub.on_message = self._on_message
        self.sub.on_subscribe = lambda *a: subscribed.set()
        self.sub.connect("127.0.0.1", port)
        self.sub.subscribe(reply, qos=0)
        self.sub.loop_start()
        subscribed.wait(10)
        self.pub = _client(port, f"bench-probe-{reply}")

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        try:
            key = round(float(msg.payload) * 1000)
        except ValueError:
            return
        with self._lock:
            sent = self.sent.pop(key, None)
            if sent is not None:
                self.latencies.append((now - sent) * 1000)

    def _send(self, topic: str, i: int, cold: bool, gap: float) -> None:
        if cold:
            self.pub.publish(topic, "29", qos=0)
            time.sleep(gap)
        value = 31 + i / 1000
        with self._lock:
            self.sent[round(value * 1000)] = time.perf_counter()
        self.pub.publish(topic, f"{value:.3f}", qos=0)

    def warm_up(self, topic: str, cold: bool, timeout: float = 60.0) -> None:
        """Probe until one comes back (the peer is subscribed and its rule armed)."""
        deadline = time.monotonic() + timeout
        i = 1000  # values from 32 on: apart from the measured probes
        while not self.latencies:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no probe came back on {self.sub} within {timeout:.0f}s")
            self._send(topic, i, cold, 0.01)
            i += 1
            time.sleep(0.1)
        time.sleep(0.5)
        with self._lock:
            self.sent.clear()
            self.latencies.clear()

    def run(self, topic: str, count: int, rate: float, *, cold: bool) -> None:
        gap = 1.0 / rate
        for i in range(count):
            self._send(topic, i, cold, gap / 2)
            time.sleep(gap / 2 if cold else gap)
        wait_until(lambda: not self.sent, timeout=10)

    def close(self) -> None:
        for c in (self.sub, self.pub):
            c.loop_stop()
            c.disconnect()


def background_load(port: int, rate: float, stop: Any) -> None:
    """`rate` readings a second spread over 100 devices, paced in 10 ms slices; the values stay
    below every benchmark threshold, so the rules evaluate them all and fire on none."""
    client = _client(port, "bench-load")
    i = 0
    start = time.perf_counter()
    try:
        while not stop.is_set():
            due = int((time.perf_counter() - start) * rate)
            while i < due:
                client.publish(
                    f"sensors/home/dev{i % DEVICES}/temperature", f"{18 + i % 7 / 10:.1f}", qos=0
                )
                i += 1
            time.sleep(0.01)
    finally:
        client.loop_stop()
        client.disconnect()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_gateway(config: GatewayConfig, stop: Any, ready: Any) -> None:
    """The gateway in its own process, as in production (no GIL shared with the load)."""
    with GatewayThread(config):
        ready.set()
        stop.wait()


def run_load(port: int, rate: float, stop: Any) -> None:
    background_load(port, rate, stop)


def measure(port: int, probes: int, rate: float, reply: str) -> tuple[list[float], list[float]]:
    """Latencies of the peer's commands and, on the same broker under the same load, of the
    broker's round trip alone."""
    raw = Probe(port, "bench/raw")
    raw.warm_up("bench/raw", cold=False)
    raw.run("bench/raw", probes, rate, cold=False)
    raw.close()
    peer = Probe(port, reply)
    peer.warm_up(PROBE_TOPIC, cold=True)
    peer.run(PROBE_TOPIC, probes, rate, cold=True)
    peer.close()
    return peer.latencies, raw.latencies


def live_latency(probes: int, rate: float, load: float) -> tuple[list[float], list[float]]:
    """The gateway (built as `edge-gateway run` builds it, in its own process) with the probe
    rule and the 100 benchmark rules, every reading buffered."""
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(workdir=Path(tmp) / "mq") as broker:
        rules = Path(tmp) / "rules.yaml"
        # the probe rule plus the 100 benchmark rules, which evaluate every background reading
        probe = yaml.safe_load(LATENCY_RULES)["rules"]
        others = [r.rule.model_dump(by_alias=True, exclude_defaults=True) for r in rule_set(100)]
        rules.write_text(yaml.safe_dump({"rules": probe + others}))
        config = GatewayConfig(
            mqtt=MqttConfig(
                host=broker.host,
                port=broker.port,
                client_id="bench-gateway",
                subscriptions=[Subscription(topic="sensors/#", qos=1)],
            ),
            buffer=BufferConfig(path=Path(tmp) / "buffer.duckdb", flush_interval=0.002),
            api=ApiConfig(enabled=False),
            rules=RulesConfig(files=[rules], reload=False),
        )
        ctx = mp.get_context("spawn")
        stop, ready = ctx.Event(), ctx.Event()
        gateway_process = ctx.Process(target=run_gateway, args=(config, stop, ready))
        loader = ctx.Process(target=run_load, args=(broker.port, load, stop))
        gateway_process.start()
        try:
            if not ready.wait(60):
                raise RuntimeError("the gateway did not start")
            loader.start()
            time.sleep(2.0)  # let the load settle
            return measure(broker.port, probes, rate, COMMAND_TOPIC)
        finally:
            stop.set()
            loader.join(30)
            gateway_process.join(60)


def nodered_latency(probes: int, rate: float, load: float) -> tuple[list[float], list[float]]:
    """Node-RED 4 on the same rule, against its own private Mosquitto, under the same load."""
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(workdir=Path(tmp) / "mq") as broker:
        ctx = mp.get_context("spawn")
        stop = ctx.Event()
        loader = ctx.Process(target=run_load, args=(broker.port, load, stop))
        with NodeRed(Path(tmp) / "node-red", broker.port, PROBE_TOPIC, COMMAND_TOPIC) as red:
            try:
                loader.start()
                time.sleep(2.0)
                if not red.running():
                    raise RuntimeError(f"Node-RED stopped:\n{red.log()}")
                return measure(broker.port, probes, rate, COMMAND_TOPIC)
            finally:
                stop.set()
                loader.join(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=11, help="batches of readings per run")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--probes", type=int, default=400)
    parser.add_argument("--probe-rate", type=float, default=50.0, help="probes per second")
    parser.add_argument("--load", type=float, default=1000.0, help="background msg/s")
    args = parser.parse_args()
    if not 0 < args.probes < 1000:
        parser.error("--probes: 1 to 999 (each probe's value names it, to 3 decimals)")

    tables = workload(args.batches, args.batch_size)
    print(f"engine over {DEVICES} devices, {args.batch_size}-reading batches:")
    rates = {}
    for count in (1, 100, 1000):
        use = tables if count < 1000 else tables[: max(3, len(tables) // 4)]
        rate, fired = engine_rate(count, use)
        ceiling = ceiling_rate(count, use)
        rates[count] = rate
        print(
            f"  {count:>5} rules: {rate:>12,.0f} evaluations/s  ({fired} actions)   "
            f"ceiling (bare dict+compare loop): {ceiling:>12,.0f}/s  ratio {rate / ceiling:.2f}"
        )
    compiled_kb, state_kb = memory_per_rule(1000, tables)
    print(
        f"memory: {compiled_kb:.1f} KB per compiled rule, "
        f"{state_kb:.1f} KB with state for {DEVICES} devices"
    )

    latencies, raw = live_latency(args.probes, args.probe_rate, args.load)
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    raw_p99 = percentile(raw, 0.99)
    print(
        f"live: reading -> command via Mosquitto at {args.load:.0f} msg/s background, 100 rules "
        f"and the probe rule, every reading buffered ({len(latencies)}/{args.probes} probes): "
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, mean {statistics.fmean(latencies):.2f} ms"
    )
    print(
        f"ceiling: broker round trip alone: p50 {percentile(raw, 0.5):.2f} ms, p99 {raw_p99:.2f} ms"
        f"  (gateway p99 / round trip p99: {p99 / raw_p99:.2f})"
    )
    red, red_raw = nodered_latency(args.probes, args.probe_rate, args.load)
    red_p50, red_p99 = percentile(red, 0.5), percentile(red, 0.99)
    print(
        f"peer: Node-RED {installed_version()} on the probe rule (mqtt in -> switch -> switch -> "
        f"mqtt out), its own Mosquitto, the same load ({len(red)}/{args.probes} probes): "
        f"p50 {red_p50:.2f} ms, p99 {red_p99:.2f} ms; its broker's round trip "
        f"p50 {percentile(red_raw, 0.5):.2f} ms, p99 {percentile(red_raw, 0.99):.2f} ms"
    )
    print(f"load average {os.getloadavg()[0]:.2f}")
    print(
        f"rules evals_per_s={rates[100]:.0f} kb_per_rule={state_kb:.1f} "
        f"p50_ms={p50:.2f} p99_ms={p99:.2f} nodered_p50_ms={red_p50:.2f} "
        f"nodered_p99_ms={red_p99:.2f} broker_p99_ms={raw_p99:.2f}"
    )


if __name__ == "__main__":
    main()
