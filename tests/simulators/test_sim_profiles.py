"""Every device profile publishes believable signals, through a real Mosquitto."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime

import orjson
from simhelpers import Collector, scenario

from gateway.services.mosquitto import Mosquitto
from gateway.testing import wait_until
from simulators.devices import PROFILES
from simulators.runner import ScenarioRunner

METRICS = {
    "climate": {"temperature", "humidity", "battery"},
    "thermostat": {"setpoint", "heating"},
    "lux": {"illuminance", "battery"},
    "motion": {"occupancy", "battery"},
    "contact": {"contact", "battery"},
    "smoke": {"smoke", "co", "battery"},
    "co2": {"co2"},
    "leak": {"water_leak", "battery"},
    "light": {"state"},
    "valve": {"state"},
    "plug": {"state", "power", "energy", "voltage"},
    "meter": {"power", "energy"},
    "freezer": {"temperature", "door"},
}


def series(collector: Collector, device: str, metric: str) -> list[tuple[float, object]]:
    """(device time, value) of one metric, from JSON payloads with `ts`."""
    out = []
    for m in collector.on(f"sensors/home/{device}/{metric}"):
        body = orjson.loads(m.payload)
        out.append((float(body["ts"]), body["value"]))
    return out


def hour(ts: float) -> float:
    when = datetime.fromtimestamp(ts, UTC)
    return when.hour + when.minute / 60


def test_every_profile_reports_its_metrics_over_a_day(
    broker: Mosquitto, collector: Collector
) -> None:
    assert set(METRICS) == set(PROFILES)
    fleet = [
        {
            "profile": profile,
            "name": f"{profile}-1",
            "room": "lab" if profile != "smoke" else "kitchen",
            "interval": "10m",
            "options": {"payload": "json", "timestamps": True},
        }
        for profile in PROFILES
    ]
    timeline = [
        {"at": "+8h", "device": "motion-1", "action": "arrive", "for": "10m"},
        {"at": "+9h", "device": "freezer-1", "action": "door_open"},
        {"at": "+570m", "device": "freezer-1", "action": "door_close"},
        {"at": "+12h", "device": "leak-1", "action": "leak"},
        {"at": "+725m", "device": "valve-1", "action": "off"},
        {"at": "+15h", "device": "smoke-1", "action": "fire"},
        {"at": "+16h", "device": "contact-1", "action": "open"},
    ]
    plan = scenario(fleet=fleet, timeline=timeline, duration="24h")
    report = ScenarioRunner(plan, broker.host, broker.port, realtime=False).run()
    assert wait_until(lambda: len(collector.snapshot()) >= report.published)

    metrics: dict[str, set[str]] = defaultdict(set)
    for m in collector.snapshot():
        _, _, device, metric = m.topic.split("/")
        metrics[device].add(metric)
    assert metrics == {f"{p}-1": set(names) for p, names in METRICS.items()}

    # Daylight: dark at night, bright around noon (indoor share of ~20 klx outside).
    lux = series(collector, "lux-1", "illuminance")
    assert max(float(str(v)) for t, v in lux if hour(t) < 5) < 5
    assert min(float(str(v)) for t, v in lux if 11 <= hour(t) <= 13) > 200
    # Room temperature follows the day; sensor noise keeps readings from repeating.
    temps = [float(str(v)) for _, v in series(collector, "climate-1", "temperature")]
    assert 10 < min(temps) < max(temps) < 30 and len(set(temps)) > 100
    # Cumulative energy never goes down; batteries only drain.
    energy = [float(str(v)) for _, v in series(collector, "meter-1", "energy")]
    assert energy == sorted(energy) and energy[-1] > energy[0]
    battery = [float(str(v)) for _, v in series(collector, "climate-1", "battery")]
    assert battery == sorted(battery, reverse=True) and battery[-1] < battery[0]
    # Motion: occupied after someone arrives at 08:00, clear again after the cooldown.
    motion = series(collector, "motion-1", "occupancy")
    assert next(v for t, v in motion if 8 <= hour(t) < 8.1) is True
    assert all(v is False for t, v in motion if hour(t) < 8 or hour(t) > 9)
    # The freezer holds about -18 °C, warms with its door open, and cools back.
    freezer = series(collector, "freezer-1", "temperature")
    assert all(-20 < float(str(v)) < -16 for t, v in freezer if hour(t) < 9)
    assert max(float(str(v)) for t, v in freezer if 9 <= hour(t) <= 9.5) > -5
    # The leak stays wet until the valve is closed and the floor dries.
    leak = series(collector, "leak-1", "water_leak")
    assert all(v is False for t, v in leak if hour(t) < 12)
    assert [v for t, v in leak if 12 <= hour(t) < 12.05] == [True]
    assert leak[-1][1] is False
    # A fire: smoke alarm and CO climbing.
    smoke = series(collector, "smoke-1", "smoke")
    assert smoke[-1][1] is True and all(v is False for t, v in smoke if hour(t) < 15)
    assert max(float(str(v)) for _, v in series(collector, "smoke-1", "co")) > 100
    assert series(collector, "contact-1", "contact")[-1][1] == "open"
