"""`edge-gateway simulate --check` passes when the expected commands come, fails listing misses."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from gateway.services.mosquitto import Mosquitto
from gateway.testing import wait_until

SCENARIO = {
    "name": "check-hallway",
    "site": "home",
    "start": "2026-01-15T19:00:00Z",
    "speed": 10,
    "duration": "30s",
    "fleet": [
        {"profile": "motion", "name": "hall-motion", "room": "hall", "interval": "1m"},
        {"profile": "light", "name": "hall-light", "room": "hall", "interval": "1m"},
    ],
    "timeline": [{"at": "+5s", "device": "hall-motion", "action": "arrive"}],
    "expect": [
        {
            "name": "hall light on after motion",
            "topic": "commands/home/hall-light/set",
            "payload": "ON",
            "after": "+5s",
            "by": "+25s",
        }
    ],
}


@contextmanager
def motion_rule(broker: Mosquitto) -> Iterator[list[bytes]]:
    """Stands in for a rule: motion reported -> switch the hall light on."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="motion-rule")
    fired: list[bytes] = []
    ready: list[bool] = []

    def on_message(c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
        if msg.payload == b"true":
            fired.append(bytes(msg.payload))
            c.publish("commands/home/hall-light/set", b"ON", qos=1)

    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe("sensors/home/hall-motion/occupancy", qos=1)
    client.on_subscribe = lambda *_: ready.append(True)
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert wait_until(lambda: bool(ready))
    try:
        yield fired
    finally:
        client.disconnect()
        client.loop_stop()


def simulate_check(broker: Mosquitto, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "hallway.yaml"
    path.write_text(yaml.safe_dump(SCENARIO))
    cli = Path(sys.executable).with_name("edge-gateway")  # the installed console script
    command = [str(cli), "simulate", "--scenario", str(path)]
    command += ["--port", str(broker.port), "--check"]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_check_passes_when_the_expected_command_comes(broker: Mosquitto, tmp_path: Path) -> None:
    with motion_rule(broker) as fired:
        result = simulate_check(broker, tmp_path)
    assert fired, "the motion was never reported"
    assert result.returncode == 0, result.stdout + result.stderr
    assert "met    hall light on after motion: at 19:00:" in result.stdout


def test_check_fails_listing_the_command_that_never_came(broker: Mosquitto, tmp_path: Path) -> None:
    result = simulate_check(broker, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        "missed hall light on after motion: nothing arrived on commands/home/hall-light/set by "
        "19:00:25" in result.stdout
    )
