"""Devices obey MQTT commands and report their new state, so rules can be tested in a loop."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
from simhelpers import Collector, Received, scenario

from gateway.ingest import sparkplug as spb
from gateway.services.mosquitto import Mosquitto
from gateway.testing import publisher, wait_until
from simulators.runner import ScenarioRunner


@contextmanager
def playing(broker: Mosquitto, speed: float, **plan: Any) -> Iterator[ScenarioRunner]:
    """Play a scenario in (accelerated) real time on a thread while the test runs."""
    runner = ScenarioRunner(scenario(**plan), broker.host, broker.port, speed=speed)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,))
    thread.start()
    try:
        yield runner
    finally:
        stop.set()
        thread.join(10)


def values(collector: Collector, topic: str) -> list[str]:
    return [m.payload.decode() for m in collector.on(topic) if m.topic == topic]


def test_light_turns_on_and_the_room_gets_brighter(broker: Mosquitto, collector: Collector) -> None:
    fleet = [
        {"profile": "light", "name": "hallway-light", "room": "hallway", "interval": "1m"},
        {"profile": "lux", "name": "hallway-lux", "room": "hallway", "interval": "1m"},
    ]
    with playing(broker, 60, fleet=fleet, start="2026-01-15T19:00:00Z", duration="2h"):
        lux = "sensors/home/hallway-lux/illuminance"
        assert wait_until(lambda: len(values(collector, lux)) >= 2)
        assert wait_until(lambda: len(values(collector, "sensors/home/hallway-light/state")) > 0)
        assert all(float(v) < 20 for v in values(collector, lux))  # dark: evening in January
        assert values(collector, "sensors/home/hallway-light/state")[-1] == "OFF"
        seen = len(values(collector, lux))
        cmd = publisher(broker.host, broker.port, "rule")
        cmd.publish("commands/home/hallway-light/set", b"ON", qos=1).wait_for_publish(5)
        cmd.loop_stop()
        assert wait_until(lambda: values(collector, "sensors/home/hallway-light/state")[-1] == "ON")
        assert wait_until(lambda: len(values(collector, lux)) > seen + 1)
        assert float(values(collector, lux)[-1]) > 200


def test_thermostat_setpoint_changes_the_room_trajectory(
    broker: Mosquitto, collector: Collector
) -> None:
    fleet = [
        {
            "profile": "thermostat",
            "name": "kitchen-thermostat",
            "room": "kitchen",
            "interval": "1h",
        },
        {"profile": "climate", "name": "kitchen-climate", "room": "kitchen", "interval": "5m"},
    ]
    temperature = "sensors/home/kitchen-climate/temperature"
    with playing(broker, 3600, fleet=fleet, duration="24h"):
        assert wait_until(lambda: len(values(collector, temperature)) >= 3)
        before = max(float(v) for v in values(collector, temperature))
        assert before < 21
        seen = len(values(collector, temperature))
        cmd = publisher(broker.host, broker.port, "rule")
        cmd.publish("commands/home/kitchen-thermostat/set", b"25", qos=1).wait_for_publish(5)
        cmd.loop_stop()
        assert wait_until(
            lambda: "25" in values(collector, "sensors/home/kitchen-thermostat/setpoint")
        )
        assert values(collector, "sensors/home/kitchen-thermostat/heating")[-1] == "true"
        # Heating pulls the room towards 25 °C with a time constant of 20 minutes.
        assert wait_until(lambda: len(values(collector, temperature)) > seen + 24)
        after = [float(v) for v in values(collector, temperature)[seen:]]
        assert after[-1] > 24 and after[-1] > before + 3


def _sparkplug_state(m: Received) -> str | None:
    if "/DDATA/" not in m.topic and "/DBIRTH/" not in m.topic:
        return None
    texts = [x.value for x in spb.decode_payload(m.payload).metrics if x.value in ("ON", "OFF")]
    return str(texts[-1]) if texts else None


def _json_field(*path: str) -> Callable[[Received], str | None]:
    def get(m: Received) -> str | None:
        node: Any = orjson.loads(m.payload)
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return str(node)

    return get


FORMATS: dict[str, tuple[str, bytes, str, Callable[[Received], str | None], str]] = {
    # format: (command topic, command payload, report topic, read the state, state when off)
    "gateway": (
        "commands/home/plug/set",
        b"OFF",
        "sensors/home/plug/state",
        lambda m: m.payload.decode(),
        "OFF",
    ),
    "zigbee2mqtt": (
        "zigbee2mqtt/plug/set",
        b'{"state": "OFF"}',
        "zigbee2mqtt/plug",
        _json_field("state"),
        "OFF",
    ),
    "tasmota": ("cmnd/plug/POWER", b"OFF", "stat/plug/POWER", lambda m: m.payload.decode(), "OFF"),
    "shelly": (
        "plug/rpc",
        b'{"id": 1, "src": "rule", "method": "Switch.Set", "params": {"id": 0, "on": false}}',
        "plug/events/rpc",
        _json_field("params", "switch:0", "output"),
        "False",
    ),
    "statestream": (
        "commands/home/plug/set",
        b"OFF",
        "homeassistant/switch/plug_state/state",
        lambda m: orjson.loads(m.payload),  # JSON-encoded, as current Home Assistant sends it
        "off",
    ),
    "sparkplug": (
        "spBv1.0/home/DCMD/home-edge/plug",
        spb.encode_payload(spb.Payload(metrics=[spb.Metric("state", False, spb.BOOLEAN)])),
        "spBv1.0/home/",
        _sparkplug_state,
        "OFF",
    ),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_plug_obeys_commands_in_its_own_format(
    broker: Mosquitto, collector: Collector, fmt: str
) -> None:
    command_topic, command, report_topic, state_of, off = FORMATS[fmt]
    fleet = [{"profile": "plug", "name": "plug", "format": fmt, "interval": "1m"}]

    def states() -> list[str]:
        return [s for m in collector.on(report_topic) if (s := state_of(m)) is not None]

    with playing(broker, 60, fleet=fleet, duration="1h"):
        # The simulator subscribes to its commands before it publishes anything.
        assert wait_until(lambda: len(collector.snapshot()) > 0)
        assert off not in states()
        cmd = publisher(broker.host, broker.port, "rule")
        cmd.publish(command_topic, command, qos=1).wait_for_publish(5)
        cmd.loop_stop()
        assert wait_until(lambda: off in states())
