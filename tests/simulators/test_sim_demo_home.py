"""The demo home keeps its contract: the devices and topics the demo's rules are written against."""

from __future__ import annotations

from simhelpers import Collector

from gateway.services.mosquitto import Mosquitto
from gateway.testing import wait_until
from simulators.runner import ScenarioRunner
from simulators.scenario import load_scenario


def test_demo_home_first_minute_dark_hallway_freezer_and_leak(
    broker: Mosquitto, collector: Collector
) -> None:
    plan = load_scenario("demo-home")
    assert plan.speed == 1  # the demo plays in real time
    report = ScenarioRunner(plan, broker.host, broker.port, realtime=False).run()
    assert wait_until(lambda: len(collector.snapshot()) >= report.published)
    start = plan.start_ts

    def reports(device: str, metric: str) -> list[str]:
        topic = f"sensors/home/{device}/{metric}"
        # Gateway-layout plain payloads carry no time: order and report cadence give it.
        return [m.payload.decode() for m in collector.snapshot() if m.topic == topic]

    topics = {m.topic for m in collector.snapshot()}
    for room in ("kitchen", "living", "bedroom"):
        assert f"sensors/home/{room}-climate/temperature" in topics
        assert f"sensors/home/{room}-climate/humidity" in topics
    for topic in (
        "hallway-motion/occupancy",
        "hallway-lux/illuminance",
        "hallway-light/state",
        "kitchen-freezer/temperature",
        "kitchen-leak/water_leak",
        "kitchen-valve/state",
        "front-door/contact",
    ):
        assert f"sensors/home/{topic}" in topics
    assert {
        m.topic for m in collector.snapshot() if not m.topic.startswith("sensors/home/")
    } == set()
    # Someone comes home: the door opens, motion in a dark hallway, the light is off.
    assert "open" in reports("front-door", "contact")
    assert reports("hallway-motion", "occupancy")[0] == "true"
    assert all(float(v) < 20 for v in reports("hallway-lux", "illuminance")[:10])
    assert set(reports("hallway-light", "state")) == {"OFF"}
    # The freezer warms past -10 °C well within a minute of its door being left open at +25s.
    freezer = [float(v) for v in reports("kitchen-freezer", "temperature")]
    assert -19.5 < freezer[0] < -16.5 and max(freezer[:12]) > -10
    # The leak: wet until a rule closes the valve (nothing closes it here).
    assert reports("kitchen-leak", "water_leak")[0] == "false"
    assert reports("kitchen-leak", "water_leak")[-1] == "true"
    # Expectations the demo's rules must meet, for `simulate --scenario demo-home --check`.
    assert {e.topic for e in plan.expect} == {
        "commands/home/hallway-light/set",
        "commands/home/kitchen-valve/set",
    }
    assert plan.time(plan.timeline[1].at) - start == 12
