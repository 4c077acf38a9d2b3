"""Devices with wrong clocks, as a new user meets them: a real Mosquitto, `edge-gateway run` as
a process, one `above: 30` rule, every device sending 29 then 31 with its own time. Each device
fires, whatever the others' clocks say; /api/rules shows each device's timeline.

- on time; ten seconds behind; an hour ahead taken as sent (a route with no skew bound), then a
  device on time after it (the shared clock of old silenced it, and every device after it);
- an hour ahead and a day back on a route with the default bound: run on arrival time, counted;
- a Tasmota sending local time without a zone, on a route that names the zone;
- a device a minute ahead that then stops sending times.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import paho.mqtt.client as paho
import yaml
from faulthelpers import gateway_ready, unique, write_config
from paho.mqtt.enums import CallbackAPIVersion

from gateway.apiclient import GatewayApi
from gateway.services.mosquitto import Mosquitto
from gateway.sqlclient import query
from gateway.testing import GatewayProcess, publisher, wait_until

RULES = """
rules:
  - id: hot
    select: {metric: [temperature, "*.Temperature"]}
    trigger: {type: threshold, above: 30}
    actions:
      - mqtt: {topic: "commands/{device}/fan", payload: "{value}"}
"""

ROUTES = [
    {"pattern": "sensors/raw/{device}/{metric}", "max_clock_skew": None},
    {"pattern": "sensors/{site}/{device}/{metric}"},
    {"pattern": "tele/{device}/SENSOR", "decoder": "tasmota", "timezone": "Europe/Berlin"},
]


class Commands:
    """Subscribes to `commands/#` and keeps what arrives, by device."""

    def __init__(self, broker: Mosquitto) -> None:
        self.seen: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self.ready = threading.Event()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=unique("commands"))
        client.on_connect = lambda c, *_: c.subscribe("commands/#", qos=1)
        client.on_subscribe = lambda *_: self.ready.set()
        client.on_message = self._on_message
        client.connect(broker.host, broker.port)
        client.loop_start()
        self.client = client

    def _on_message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        device = message.topic.split("/")[1]
        with self._lock:
            self.seen.setdefault(device, []).append(message.payload.decode())

    def by_device(self) -> dict[str, list[str]]:
        with self._lock:
            return {d: list(p) for d, p in self.seen.items()}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_every_device_fires_on_its_own_timeline(
    broker: Mosquitto, tmp_path: Path, start_gateway: Callable[[Path], GatewayProcess]
) -> None:
    rules = tmp_path / "hot.yaml"
    rules.write_text(RULES)
    config = write_config(
        tmp_path,
        broker,
        "gw-clocks",
        extra={
            "routes": ROUTES,
            "rules": {"files": [str(rules)], "allowed_lateness": "2s"},
        },
    )
    data = yaml.safe_load(config.read_text())
    data["mqtt"]["subscriptions"].append({"topic": "tele/#", "qos": 1})
    config.write_text(yaml.safe_dump(data))
    buffer = tmp_path / "buffer.duckdb"
    gateway = start_gateway(config)
    assert wait_until(lambda: gateway_ready(buffer), timeout=30), gateway.tail()
    commands = Commands(broker)
    assert commands.ready.wait(10)
    pub = publisher(broker.host, broker.port, client_id=unique("devices"))

    def send(topic: str, value: float, offset: float | None) -> None:
        body: dict[str, Any] = {"value": value}
        if offset is not None:
            body["ts"] = time.time() + offset
        pub.publish(topic, json.dumps(body), qos=1).wait_for_publish(5)

    def tasmota(device: str, value: float) -> None:
        local = datetime.now(ZoneInfo("Europe/Berlin")).replace(tzinfo=None)
        body = {"Time": local.isoformat(timespec="seconds"), "AM2301": {"Temperature": value}}
        pub.publish(f"tele/{device}/SENSOR", json.dumps(body), qos=1).wait_for_publish(5)

    hour, day = 3600.0, 86400.0
    for device, offset in [
        ("on-time", 0.0),
        ("behind", -10.0),
        ("raw-ahead", hour),
        ("raw-after", 0.0),
        ("ahead", hour),
        ("day-back", -day),
    ]:
        site = "raw" if device.startswith("raw-") else "home"
        for value in (29.0, 31.0):
            send(f"sensors/{site}/{device}/temperature", value, offset)
            time.sleep(0.05)
    tasmota("hall", 29.0)
    tasmota("hall", 31.0)
    send("sensors/home/stops/temperature", 29.0, 60.0)
    send("sensors/home/stops/temperature", 29.0, None)
    send("sensors/home/stops/temperature", 31.0, None)

    expected = {
        d: ["31"]
        for d in ("on-time", "behind", "raw-ahead", "raw-after", "ahead", "day-back", "stops")
    }
    expected["hall"] = ["31"]
    assert wait_until(lambda: commands.by_device() == expected, timeout=20), (
        commands.by_device(),
        gateway.tail(),
    )
    pub.disconnect()
    pub.loop_stop()
    commands.close()

    api = GatewayApi.find(buffer)
    assert api is not None
    view = api.get_json("/api/rules")
    timelines = {t["device"]: t for t in view["timelines"]}
    assert view["counters"]["late_dropped"] == 0
    assert view["counters"]["clock_skew_adjusted"] == 4  # ahead and day-back, two each
    assert timelines["raw-ahead"]["lag_s"] < -3500  # an hour ahead, on its own timeline
    assert 9 < timelines["behind"]["lag_s"] < 12
    assert timelines["ahead"]["clock_skew_adjusted"] == 2
    assert timelines["ahead"]["time_source"] == "arrival"
    assert timelines["stops"]["time_source"] == "arrival"
    assert abs(timelines["hall"]["lag_s"]) < 3  # its local time, read in its zone

    # Stored as the devices sent them, the skew verdict a tag beside the device's time.
    rows = query(
        buffer,
        "SELECT device, epoch(event_time) - epoch(ingest_time) AS skew, "
        "tags->>'clock_skew' AS verdict FROM readings WHERE value = 31 ORDER BY device",
    ).to_pylist()
    found = {r["device"]: (round(r["skew"] / 60), r["verdict"]) for r in rows}
    assert found["ahead"] == (60, "adjusted")
    assert found["day-back"] == (-1440, "adjusted")
    assert found["raw-ahead"] == (60, None)
    assert found["hall"] == (0, None)
    assert gateway.terminate() == 0
