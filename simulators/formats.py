"""Payload formats: how a device's samples become MQTT messages, and how commands reach it.

One encoder per device; it keeps what the format needs between messages (Shelly's last status,
the Sparkplug node's aliases and `seq`). Formats: `gateway` (`sensors/{site}/{device}/{metric}`),
`zigbee2mqtt`, `tasmota`, `shelly` (Gen2 NotifyStatus), `statestream` (Home Assistant) and
`sparkplug` (Sparkplug B protobuf).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import orjson

from gateway.errors import DecodeError
from gateway.ingest import sparkplug as spb
from simulators.devices import Device, Sample, SampleValue

FormatName = Literal["gateway", "zigbee2mqtt", "tasmota", "shelly", "statestream", "sparkplug"]
Reason = Literal["periodic", "event", "command"]


@dataclass(slots=True)
class Message:
    """One MQTT publish; `client` names the connection it goes out on (Sparkplug nodes own one)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    client: str = "main"
    device: str = ""
    ts: float = 0.0  # the device's clock when it sent this (epoch seconds)


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() and abs(value) < 1e15 else value


def _plain(value: SampleValue) -> bytes:
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, float | int):
        return repr(_number(value)).encode()
    return value.encode()


class Encoder:
    """Base: `encode` turns samples into messages; `commands` lists the topics a device obeys."""

    name: ClassVar[str] = ""

    def __init__(
        self, site: str, device: Device, qos: int, retain: bool, options: dict[str, Any]
    ) -> None:
        self.site = site
        self.device = device
        self.qos = qos
        self.retain = retain
        self.options = options

    def msg(self, topic: str, payload: bytes, ts: float, client: str = "main") -> Message:
        return Message(topic, payload, self.qos, self.retain, client, self.device.name, ts)

    def encode(self, samples: list[Sample], ts: float, reason: Reason) -> list[Message]:
        raise NotImplementedError

    def command_topics(self) -> list[str]:
        return []

    def command_payload(self, topic: str, payload: bytes) -> str | None:
        """The command as the device understands it (`ON`, `21.5`), or None if not for it."""
        return payload.decode("utf-8", "replace")

    def command_reply(self, samples: list[Sample], ts: float) -> list[Message]:
        return self.encode(samples, ts, "command")


class GatewayEncoder(Encoder):
    """`sensors/{site}/{device}/{metric}`: plain `21.5`/`true`/`ON`, or JSON with value and unit."""

    name = "gateway"

    def encode(self, samples: list[Sample], ts: float, reason: Reason) -> list[Message]:
        base = f"sensors/{self.site}/{self.device.name}"
        as_json = self.options.get("payload") == "json"
        with_ts = bool(self.options.get("timestamps"))
        out = []
        for s in samples:
            if as_json or with_ts:
                body: dict[str, Any] = {"value": s.value}
                if s.unit:
                    body["unit"] = s.unit
                if with_ts:
                    body["ts"] = round(ts, 3)
                payload = orjson.dumps(body)
            else:
                payload = _plain(s.value)
            out.append(self.msg(f"{base}/{s.metric}", payload, ts))
        return out

    def command_topics(self) -> list[str]:
        return [f"commands/{self.site}/{self.device.name}/set"] if self.device.commandable else []


class Zigbee2MqttEncoder(Encoder):
    """`zigbee2mqtt/<name>`: the whole device state as one JSON object, with `linkquality`."""

    name = "zigbee2mqtt"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.state: dict[str, Any] = {}

    def encode(self, samples: list[Sample], ts: float, reason: Reason) -> list[Message]:
        for s in samples:
            value: Any = s.value
            if s.metric == "contact":
                value = s.value == "closed"  # Zigbee2MQTT: contact true means the door is shut
            elif s.metric == "illuminance":
                self.state["illuminance_lux"] = value
            self.state[s.metric] = value
        self.state["linkquality"] = int(self.device.rng.uniform(40, 200))
        return [self.msg(f"zigbee2mqtt/{self.device.name}", orjson.dumps(self.state), ts)]

    def command_topics(self) -> list[str]:
        return [f"zigbee2mqtt/{self.device.name}/set"] if self.device.commandable else []

    def command_payload(self, topic: str, payload: bytes) -> str | None:
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return payload.decode("utf-8", "replace")
        if isinstance(body, dict):
            for key in ("state", "setpoint", "current_heating_setpoint"):
                if key in body:
                    return str(body[key])
            return None
        return str(body)


_TASMOTA_SENSORS = {
    "temperature": ("AM2301", "Temperature"),
    "humidity": ("AM2301", "Humidity"),
    "illuminance": ("BH1750", "Illuminance"),
    "co2": ("MHZ19B", "CarbonDioxide"),
    "power": ("ENERGY", "Power"),
    "energy": ("ENERGY", "Total"),
    "voltage": ("ENERGY", "Voltage"),
}


class TasmotaEncoder(Encoder):
    """`tele/<topic>/SENSOR` with sensors as objects, `tele/<topic>/STATE` with POWER and Wi-Fi."""

    name = "tasmota"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.started: float | None = None

    def encode(self, samples: list[Sample], ts: float, reason: Reason) -> list[Message]:
        if self.started is None:
            self.started = ts
        # Tasmota writes local time without a zone; scenarios run in UTC.
        when = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        topic = self.device.name
        sensor: dict[str, Any] = {"Time": when}
        power_state: str | None = None
        for s in samples:
            if s.metric == "state":
                power_state = str(s.value)
                continue
            group, key = _TASMOTA_SENSORS.get(s.metric, ("SIM", s.metric.title().replace("_", "")))
            sensor.setdefault(group, {})[key] = s.value
        out = []
        if len(sensor) > 1:
            if "AM2301" in sensor:
                sensor["TempUnit"] = "C"
            out.append(self.msg(f"tele/{topic}/SENSOR", orjson.dumps(sensor), ts))
        if power_state is not None:
            if reason == "command":
                out.append(
                    self.msg(f"stat/{topic}/RESULT", orjson.dumps({"POWER": power_state}), ts)
                )
                out.append(self.msg(f"stat/{topic}/POWER", power_state.encode(), ts))
            uptime = int(ts - self.started)
            state = {
                "Time": when,
                "Uptime": f"{uptime // 86400}T{time.strftime('%H:%M:%S', time.gmtime(uptime))}",
                "UptimeSec": uptime,
                "POWER": power_state,
                "Wifi": {"RSSI": int(self.device.rng.uniform(50, 100)), "Signal": -60},
            }
            out.append(self.msg(f"tele/{topic}/STATE", orjson.dumps(state), ts))
        return out

    def command_topics(self) -> list[str]:
        return [f"cmnd/{self.device.name}/POWER"] if self.device.commandable else []


def _shelly_components(samples: list[Sample]) -> dict[str, dict[str, Any]]:
    comps: dict[str, dict[str, Any]] = {}
    for s in samples:
        v = s.value
        if s.metric == "temperature" and isinstance(v, float | int):
            comps["temperature:0"] = {"id": 0, "tC": v, "tF": round(v * 9 / 5 + 32, 1)}
        elif s.metric == "humidity":
            comps["humidity:0"] = {"id": 0, "rh": v}
        elif s.metric == "illuminance":
            comps["illuminance:0"] = {"id": 0, "lux": v}
        elif s.metric == "state":
            comps.setdefault("switch:0", {"id": 0})["output"] = v == "ON"
        elif s.metric == "power":
            comps.setdefault("switch:0", {"id": 0})["apower"] = v
        elif s.metric == "voltage":
            comps.setdefault("switch:0", {"id": 0})["voltage"] = v
        elif s.metric == "energy" and isinstance(v, float | int):
            comps.setdefault("switch:0", {"id": 0})["aenergy"] = {
                "total": round(v * 1000, 3),
                "by_minute": [0.0, 0.0, 0.0],
            }
        elif s.metric == "battery":
            comps["devicepower:0"] = {"id": 0, "battery": {"percent": v}}
        else:
            comps[f"{s.metric}:0"] = {"id": 0, "value": v}
    return comps


def _diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            sub = _diff(before, value)
            if sub:
                out[key] = sub
        elif before != value:
            out[key] = value
    return out


class ShellyEncoder(Encoder):
    """`<id>/events/rpc`: NotifyFullStatus first and every `full_every` reports, NotifyStatus with
    only the changed fields in between (as Gen2 devices do)."""

    name = "shelly"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.status: dict[str, dict[str, Any]] = {}
        self.reports = 0
        self.full_every = int(self.options.get("full_every", 10))

    def encode(self, samples: list[Sample], ts: float, reason: Reason) -> list[Message]:
        comps = _shelly_components(samples)
        full = not self.status or (reason == "periodic" and self.reports % self.full_every == 0)
        self.reports += 1
        if full:
            for name, comp in comps.items():
                self.status.setdefault(name, {}).update(comp)
            params: dict[str, Any] = dict(self.status)
            method = "NotifyFullStatus"
        else:
            params = {}
            for name, comp in comps.items():
                changed = _diff(self.status.get(name, {}), comp)
                self.status.setdefault(name, {}).update(comp)
                if changed:
                    params[name] = {"id": 0, **changed} if "id" in comp else changed
            if not params:
                return []
            method = "NotifyStatus"
        body = {
            "src": self.device.name,
            "dst": f"{self.device.name}/events",
            "method": method,
            "params": {"ts": round(ts, 2), **params},
        }
        return [self.msg(f"{self.device.name}/events/rpc", orjson.dumps(body), ts)]

    def command_topics(self) -> list[str]:
        return [f"{self.device.name}/rpc"] if self.device.commandable else []

    def command_payload(self, topic: str, payload: bytes) -> str | None:
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
        if isinstance(body, dict) and body.get("method") == "Switch.Set":
            params = body.get("params") or {}
            return "ON" if params.get("on") else "OFF"
        if isinstance(body, dict) and body.get("method") == "Switch.Toggle":
            return "TOGGLE"
        return None


class StatestreamEncoder(Encoder):
    """Home Assistant statestream: `homeassistant/<domain>/<object_id>/state` and attributes
    beside it, all JSON-encoded as current Home Assistant sends them (`"on"`, `"21.5"`); the
    option `legacy_states: true` sends states as plain text, as older releases did. One entity
    per metric."""

    name = "statestream"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.announced: set[str] = set()
        self.base = str(self.options.get("base_topic", "homeassistant"))
        self.legacy = bool(self.options.get("legacy_states", False))

    def encode(self, samples: list[Sample], ts: float, reason: Reason) -> list[Message]:
        out = []
        when = orjson.dumps(datetime.fromtimestamp(ts, UTC).isoformat())
        for s in samples:
            object_id = f"{self.device.name}_{s.metric}".replace("-", "_")
            if isinstance(s.value, bool):
                domain, state = "binary_sensor", b"on" if s.value else b"off"
            elif s.metric == "state":
                domain, state = (
                    ("light" if self.device.profile == "light" else "switch"),
                    str(s.value).lower().encode(),
                )
            else:
                domain, state = "sensor", _plain(s.value)
            base = f"{self.base}/{domain}/{object_id}"
            if object_id not in self.announced:
                self.announced.add(object_id)
                name = f"{self.device.name} {s.metric}".replace("-", " ").replace("_", " ")
                out.append(self.msg(f"{base}/friendly_name", orjson.dumps(name), ts))
                if s.unit:
                    out.append(self.msg(f"{base}/unit_of_measurement", orjson.dumps(s.unit), ts))
            if not self.legacy:
                state = orjson.dumps(state.decode())
            out.append(self.msg(f"{base}/state", state, ts))
            out.append(self.msg(f"{base}/last_updated", when, ts))
        return out

    def command_topics(self) -> list[str]:
        return [f"commands/{self.site}/{self.device.name}/set"] if self.device.commandable else []


def _spb_metric(s: Sample) -> tuple[int, SampleValue]:
    v = s.value
    if isinstance(v, bool):
        return spb.BOOLEAN, v
    if isinstance(v, int | float):
        return spb.DOUBLE, float(v)
    return spb.STRING, v


class SparkplugNode:
    """One Sparkplug B edge node: its own MQTT session (NDEATH is the will), `bdSeq`, `seq`, and
    alias numbers shared by all its devices."""

    def __init__(self, group: str, node: str, qos: int) -> None:
        self.group = group
        self.node = node
        self.qos = qos
        self.client = f"spb:{group}/{node}"
        self.bd_seq = -1
        self.seq = 0
        self.born = False
        self.devices_born: set[str] = set()
        self.aliases: dict[tuple[str, str], int] = {}

    def topic(self, kind: str, device: str | None = None) -> str:
        tail = f"/{device}" if device else ""
        return f"{spb.NAMESPACE}/{self.group}/{kind}/{self.node}{tail}"

    def connect(self, ts: float) -> tuple[str, bytes]:
        """A new session: the next bdSeq, and the NDEATH will to register with the broker."""
        self.bd_seq = (self.bd_seq + 1) % 256
        self.born = False
        self.devices_born.clear()
        death = spb.Payload(
            timestamp=int(ts * 1000),
            metrics=[spb.Metric("bdSeq", self.bd_seq, spb.INT64)],
        )
        return self.topic("NDEATH"), spb.encode_payload(death)

    def _next_seq(self) -> int:
        seq = self.seq
        self.seq = (self.seq + 1) % 256
        return seq

    def _alias(self, device: str, metric: str) -> int:
        key = (device, metric)
        alias = self.aliases.get(key)
        if alias is None:
            alias = self.aliases[key] = len(self.aliases) + 1
        return alias

    def _msg(self, topic: str, payload: spb.Payload, device: str, ts: float) -> Message:
        # Sparkplug B forbids retained NBIRTH/NDATA; QoS 0 is what the spec asks of edge nodes.
        return Message(topic, spb.encode_payload(payload), self.qos, False, self.client, device, ts)

    def publish(
        self, device: str, samples: list[Sample], full: list[Sample], ts: float
    ) -> list[Message]:
        ms = int(ts * 1000)
        out: list[Message] = []
        if not self.born:
            self.seq = 0
            birth = spb.Payload(
                timestamp=ms,
                seq=self._next_seq(),
                metrics=[
                    spb.Metric("bdSeq", self.bd_seq, spb.INT64),
                    spb.Metric("Node Control/Rebirth", False, spb.BOOLEAN),
                ],
            )
            out.append(self._msg(self.topic("NBIRTH"), birth, self.node, ts))
            self.born = True
        if device not in self.devices_born:
            metrics = []
            for s in full:
                dt, value = _spb_metric(s)
                metrics.append(spb.Metric(s.metric, value, dt, self._alias(device, s.metric), ms))
            payload = spb.Payload(timestamp=ms, seq=self._next_seq(), metrics=metrics)
            out.append(self._msg(self.topic("DBIRTH", device), payload, device, ts))
            self.devices_born.add(device)
            return out
        metrics = []
        for s in samples:
            dt, value = _spb_metric(s)
            # After the births, data names each metric by its alias only.
            metrics.append(spb.Metric(None, value, dt, self._alias(device, s.metric), ms))
        payload = spb.Payload(timestamp=ms, seq=self._next_seq(), metrics=metrics)
        out.append(self._msg(self.topic("DDATA", device), payload, device, ts))
        return out


class SparkplugEncoder(Encoder):
    """A Sparkplug B device under its edge node (`node:` in the fleet, default `<site>-edge`)."""

    name = "sparkplug"
    node: SparkplugNode

    def encode(self, samples: list[Sample], ts: float, reason: Reason) -> list[Message]:
        full = samples
        if self.device.name not in self.node.devices_born and reason != "periodic":
            full = self.device.sample(ts)  # a birth must carry every metric
        return self.node.publish(self.device.name, samples, full, ts)

    def command_topics(self) -> list[str]:
        if not self.device.commandable:
            return []
        return [self.node.topic("DCMD", self.device.name)]

    def command_payload(self, topic: str, payload: bytes) -> str | None:
        try:
            decoded = spb.decode_payload(payload)
        except DecodeError:  # a garbled command is ignored, as a device would
            return None
        for metric in decoded.metrics:
            if metric.name in ("state", "setpoint"):
                value = metric.value
                if isinstance(value, bool):
                    return "ON" if value else "OFF"
                return str(value)
        return None


ENCODERS: dict[str, type[Encoder]] = {
    cls.name: cls
    for cls in (
        GatewayEncoder,
        Zigbee2MqttEncoder,
        TasmotaEncoder,
        ShellyEncoder,
        StatestreamEncoder,
        SparkplugEncoder,
    )
}
