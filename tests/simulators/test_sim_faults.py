"""Every fault type is produced at its rate, and is visible on the wire as what it claims."""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter, defaultdict
from pathlib import Path

import orjson
from simhelpers import scenario, subscribe_all

from gateway.services.mosquitto import Mosquitto
from gateway.testing import wait_until
from simulators.engine import Simulation
from simulators.formats import Message
from simulators.runner import ScenarioRunner

RATES = {
    "malformed_json": 0.03,
    "wrong_type": 0.03,
    "oversized": 0.005,
    "unknown_topic": 0.03,
    "duplicate": 0.03,
    "out_of_order": 0.03,
}
FLEET = [
    {"profile": "climate", "name": "{room}-th", "rooms": ["a", "b", "c", "d"], "interval": "30s"},
    {"profile": "plug", "name": "plug-{n}", "room": "e", "count": 4, "interval": "30s"},
]
FAULTS = {
    **RATES,
    "oversized": {"rate": RATES["oversized"], "size": 300_000},
    "clock_skew": {"rate": 0.5, "seconds": 600},
    "silent": {"rate": 0.01, "seconds": 600},
    "burst": {"rate": 0.01, "size": 10},
    "reconnect_storm": {"rate": 6, "size": 10},
}


def within(count: int, trials: int, rate: float) -> bool:
    """`count` successes of `trials` is within 4 standard deviations of `rate`."""
    sd = math.sqrt(trials * rate * (1 - rate))
    return abs(count - trials * rate) <= 4 * sd + 1


def test_every_fault_type_at_its_rate_on_the_wire(tmp_path: Path) -> None:
    plan = scenario(fleet=FLEET, faults=FAULTS, duration="3h")
    with Mosquitto(
        workdir=tmp_path / "broker",
        extra_config="log_type notice\nconnection_messages true",  # the log lists every connection
    ) as broker:
        wire = subscribe_all(broker, "sensors/#")
        try:
            report = ScenarioRunner(plan, broker.host, broker.port, realtime=False).run()
            assert wait_until(lambda: len(wire.snapshot()) >= report.published - 1)
        finally:
            wire.client.disconnect()
            wire.client.loop_stop()
        log = broker.log_path.read_text()
    counts = report.counts
    got = wire.snapshot()
    assert len(got) == report.published
    runner_sent = len(got) - counts["duplicate"]  # one draw per message; a duplicate adds one

    # Message faults: exclusive shares of the traffic.
    for fault, rate in RATES.items():
        assert counts[fault] > 0, fault
        assert within(counts[fault], runner_sent, rate), (fault, counts[fault], runner_sent)

    def parsed(payload: bytes) -> object:
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None

    bodies = [parsed(m.payload) for m in got]
    assert sum(1 for m in got if m.topic.endswith("/unexpected")) == counts["unknown_topic"]
    assert sum(1 for m in got if len(m.payload) >= 300_000) == counts["oversized"]
    assert sum(1 for b in bodies if b is None) == counts["malformed_json"]
    assert (
        sum(1 for b in bodies if isinstance(b, dict) and "n/a" in b.values())
        == counts["wrong_type"]
    )
    pairs = sum(
        1 for x, y in itertools.pairwise(got) if (x.topic, x.payload) == (y.topic, y.payload)
    )
    assert pairs == counts["duplicate"]

    # Per device: timestamps going backwards (out of order), long gaps (silent), bursts.
    times: dict[str, list[float]] = defaultdict(list)
    temps: Counter[tuple[str, float]] = Counter()
    for m, body in zip(got, bodies, strict=True):
        if isinstance(body, dict) and not m.topic.endswith("/unexpected"):
            device = m.topic.split("/")[2]
            if body["ts"] == "n/a":
                continue  # a wrong-type fault hit the timestamp itself
            times[device].append(float(body["ts"]))
            if m.topic.endswith(("/temperature", "/power")):
                temps[(device, float(body["ts"]))] += 1
    backwards = sum(1 for ts in times.values() for a, b in itertools.pairwise(ts) if b < a)
    # A held message shows as a step back in its device's clock, unless the newer message it
    # waited for was itself garbled (then there is no timestamp to compare with): see below.
    assert 0.7 * counts["out_of_order"] <= backwards <= counts["out_of_order"]
    gaps = 0  # a silence: the device's clock jumps 600 s past the newest time seen from it
    for ts in times.values():
        newest = ts[0]
        for t in ts[1:]:
            gaps += t - newest >= 600
            newest = max(newest, t)
    assert gaps == counts["silent"] > 0
    # A burst: ten reports at one instant (a few may be garbled by other faults; a plain
    # report is one, or two when duplicated).
    assert sum(1 for n in temps.values() if n >= 5) == counts["burst"] > 0
    reports = sum(1 for n in temps.values())  # periodic reports that went out
    assert within(counts["burst"], reports, 0.01) and within(counts["silent"], reports, 0.01)

    # Clock skew: compare each device's first timestamp with a run without faults.
    clean = Simulation(scenario(fleet=FLEET, duration="1h", timestamps=True))
    first_clean: dict[str, float] = {}
    for msg in clean.advance(clean.end):
        assert isinstance(msg, Message)
        first_clean.setdefault(msg.device, msg.ts)
    skewed = {d for d, ts in times.items() if abs(min(ts) - first_clean[d]) > 1.0}
    assert len(skewed) == counts["clock_skew"] > 0

    # Reconnect storms: the broker saw every storm connection.
    storm_clients = re.findall(r"New client connected from \S+ as (\S+-storm-\S+) ", log)
    assert counts["reconnect_storm"] > 0
    assert len(storm_clients) == counts["reconnect_storm"] * 10 == report.storm_connections
    assert within(counts["reconnect_storm"], 3 * 3600, 6 / 3600)


def test_out_of_order_messages_arrive_after_a_newer_one(broker: Mosquitto) -> None:
    plan = scenario(fleet=FLEET, faults={"out_of_order": 0.05}, duration="1h")
    wire = subscribe_all(broker, "sensors/#")
    try:
        report = ScenarioRunner(plan, broker.host, broker.port, realtime=False).run()
        assert wait_until(lambda: len(wire.snapshot()) >= report.published)
    finally:
        wire.client.disconnect()
        wire.client.loop_stop()
    times: dict[str, list[float]] = defaultdict(list)
    for m in wire.snapshot():
        times[m.topic.split("/")[2]].append(float(orjson.loads(m.payload)["ts"]))
    backwards = sum(1 for ts in times.values() for a, b in itertools.pairwise(ts) if b < a)
    assert backwards == report.counts["out_of_order"] > 0
    assert within(report.counts["out_of_order"], report.published, 0.05)
