"""The simulation itself: a discrete-event loop over simulated time that yields MQTT messages.

It reads no clock and does no I/O: `advance(until)` runs every report, timeline event and fault
due up to `until` and returns the messages, so the same scenario and seed always give the same
messages in the same order. The runner (simulators/runner.py) maps wall time onto it and publishes.

Faults, each switched on with a rate in the scenario's `faults:`:
- message faults (one draw per message, so their rates are exclusive shares of the traffic):
  `malformed_json` (cut in half), `wrong_type` (a string where a number was), `oversized`
  (padded to `size` bytes, default 300000), `unknown_topic` (`/unexpected` appended),
  `duplicate` (sent twice), `out_of_order` (held back and sent after the device's next, newer
  report).
  Sparkplug B messages are binary and take no message faults.
- `clock_skew`: that share of devices runs its clock up to `seconds` (default 300) off.
- `silent`: chance per report that the device goes quiet for `seconds` (default 600).
- `burst`: chance per report that the device sends `size` reports at once (default 20).
- `reconnect_storm`: storms per hour of simulated time, each `size` connections (default 50).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.errors import DecodeError
from gateway.ingest import sparkplug as spb
from simulators.devices import PROFILES, Device, Room, Sample
from simulators.formats import ENCODERS, Encoder, Message, Reason, SparkplugEncoder, SparkplugNode
from simulators.scenario import Scenario

TICK = 5.0  # seconds of simulated time between checks for self-driven changes (motion cooldown)
MESSAGE_FAULTS = (
    "malformed_json",
    "wrong_type",
    "oversized",
    "unknown_topic",
    "duplicate",
    "out_of_order",
)
_PERIODIC, _TICK, _STORM = 0, 1, 2


@dataclass(slots=True, frozen=True)
class Storm:
    """A reconnect storm: `size` clients connect at once, as after a Wi-Fi or power outage."""

    t: float
    size: int


@dataclass(slots=True)
class _Slot:
    device: Device
    encoder: Encoder
    interval: float
    skew: float = 0.0
    silent_until: float = -math.inf
    held: Message | None = None  # an out-of-order message waiting for the next one


@dataclass(slots=True)
class _Timed:
    t: float
    index: int
    event: Any = field(compare=False)


def _wrong_type(payload: bytes) -> bytes:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return b'"n/a"'
    if isinstance(data, dict):

        def swap(obj: dict[str, Any]) -> bool:
            for key, value in obj.items():
                if isinstance(value, dict) and swap(value):
                    return True
                if isinstance(value, int | float) and not isinstance(value, bool):
                    obj[key] = "n/a"
                    return True
            return False

        if swap(data):
            return orjson.dumps(data)
    return b'"n/a"'


class Simulation:
    """Built from a scenario; `advance(until)` returns what to publish, in order."""

    def __init__(self, scenario: Scenario, *, seed: int | None = None) -> None:
        self.scenario = scenario
        self.seed = scenario.seed if seed is None else seed
        self.start = scenario.start_ts
        self.t = self.start
        self.end = self.start + scenario.duration
        self.counts: Counter[str] = Counter()
        self.sent = 0
        faults = scenario.faults
        self._fault_rng = random.Random(f"{self.seed}:faults")
        self._message_faults: list[tuple[float, str]] = []
        edge = 0.0
        for name in MESSAGE_FAULTS:
            spec = getattr(faults, name)
            if spec is not None and spec.rate > 0:
                edge += spec.rate
                self._message_faults.append((edge, name))
        with_ts = (
            scenario.timestamps
            or faults.clock_skew is not None
            or (faults.out_of_order is not None)
        )
        self.rooms: dict[str, Room] = {}
        self.nodes: dict[str, SparkplugNode] = {}
        self.slots: list[_Slot] = []
        self.by_name: dict[str, _Slot] = {}
        self.commands: dict[str, _Slot] = {}
        self.node_commands: dict[str, SparkplugNode] = {}  # NCMD topics: rebirth requests
        self._queue: list[tuple[float, int, int, int]] = []
        self._order = 0
        skew_rng = random.Random(f"{self.seed}:clock_skew")
        for group in scenario.fleet:
            for name, room_name in group.names():
                room = self.rooms.get(room_name)
                if room is None:
                    room = self.rooms[room_name] = Room(room_name, self.start)
                rng = random.Random(f"{self.seed}:{name}")
                device = PROFILES[group.profile](
                    name, room, rng, self.start, dict(group.params), group.battery
                )
                options = dict(group.options)
                if with_ts:
                    options.setdefault("timestamps", True)
                qos = scenario.qos if group.qos is None else group.qos
                retain = scenario.retain if group.retain is None else group.retain
                encoder = ENCODERS[group.format](scenario.site, device, qos, retain, options)
                if isinstance(encoder, SparkplugEncoder):
                    node_name = group.node or f"{scenario.site}-edge"
                    node = self.nodes.get(node_name)
                    if node is None:
                        node = self.nodes[node_name] = SparkplugNode(scenario.site, node_name, qos)
                        self.node_commands[node.topic("NCMD")] = node
                    encoder.node = node
                slot = _Slot(device, encoder, group.interval)
                if faults.clock_skew and skew_rng.random() < faults.clock_skew.rate:
                    reach = faults.clock_skew.seconds or 300.0
                    slot.skew = skew_rng.uniform(-reach, reach)
                    self.counts["clock_skew"] += 1
                index = len(self.slots)
                self.slots.append(slot)
                self.by_name[name] = slot
                for topic in encoder.command_topics():
                    self.commands[topic] = slot
                # Stagger first reports over one interval so a fleet does not report in lockstep.
                self._push(self.start + rng.uniform(0, group.interval), _PERIODIC, index)
                if type(device).tick is not Device.tick:
                    self._push(self.start + TICK, _TICK, index)
        if faults.reconnect_storm and faults.reconnect_storm.rate > 0:
            self._push(self._next_storm(self.start), _STORM, -1)
        self.timeline = sorted(
            (_Timed(scenario.time(e.at), i, e) for i, e in enumerate(scenario.timeline)),
            key=lambda e: (e.t, e.index),
        )
        self._next_event = 0

    # -- scheduling ------------------------------------------------------------------------
    def _push(self, t: float, kind: int, index: int) -> None:
        self._order += 1
        heapq.heappush(self._queue, (t, self._order, kind, index))

    def _next_storm(self, t: float) -> float:
        spec = self.scenario.faults.reconnect_storm
        assert spec is not None
        return t + self._fault_rng.expovariate(spec.rate / 3600.0)

    def next_time(self) -> float:
        """When the next thing happens (inf if nothing is scheduled)."""
        candidates = [math.inf]
        if self._queue:
            candidates.append(self._queue[0][0])
        if self._next_event < len(self.timeline):
            candidates.append(self.timeline[self._next_event].t)
        return min(candidates)

    @property
    def finished(self) -> bool:
        return self.t >= self.end

    def sessions(self) -> dict[str, tuple[str, bytes] | None]:
        """The MQTT connections the simulation needs and each one's will (Sparkplug NDEATH)."""
        sessions: dict[str, tuple[str, bytes] | None] = {"main": None}
        for node in self.nodes.values():
            sessions[node.client] = node.connect(self.t)
        return sessions

    def reconnected(self, client: str) -> tuple[str, bytes] | None:
        """A session came back: Sparkplug nodes take the next bdSeq and are born again."""
        for node in self.nodes.values():
            if node.client == client:
                return node.connect(self.t)
        return None

    # -- running ---------------------------------------------------------------------------
    def advance(self, until: float) -> list[Message | Storm]:
        until = min(until, self.end)
        out: list[Message | Storm] = []
        while True:
            t_queue = self._queue[0][0] if self._queue else math.inf
            t_event = (
                self.timeline[self._next_event].t
                if self._next_event < len(self.timeline)
                else math.inf
            )
            t = min(t_queue, t_event)
            if t > until:
                break
            self.t = t
            if t_event <= t_queue:
                self._run_event(self.timeline[self._next_event].event, out)
                self._next_event += 1
                continue
            _, _, kind, index = heapq.heappop(self._queue)
            if kind == _STORM:
                spec = self.scenario.faults.reconnect_storm
                assert spec is not None
                self.counts["reconnect_storm"] += 1
                out.append(Storm(t, spec.size or 50))
                self._push(self._next_storm(t), _STORM, -1)
                continue
            slot = self.slots[index]
            if kind == _TICK:
                samples = slot.device.tick(t)
                if samples:
                    self._emit(slot, samples, "event", out)
                self._push(t + TICK, _TICK, index)
                continue
            self._push(t + slot.interval, _PERIODIC, index)
            self._report(slot, out)
        self.t = max(self.t, until)
        if self.finished:
            for slot in self.slots:
                if slot.held is not None:
                    out.append(slot.held)
                    slot.held = None
        return out

    def _report(self, slot: _Slot, out: list[Message | Storm]) -> None:
        t = self.t
        faults = self.scenario.faults
        if t < slot.silent_until:
            self.counts["silent_reports"] += 1
            return
        if faults.silent and self._fault_rng.random() < faults.silent.rate:
            slot.silent_until = t + (faults.silent.seconds or 600.0)
            self.counts["silent"] += 1
            self.counts["silent_reports"] += 1
            return
        repeat = 1
        if faults.burst and self._fault_rng.random() < faults.burst.rate:
            repeat = faults.burst.size or 20
            self.counts["burst"] += 1
        for _ in range(repeat):
            self._emit(slot, slot.device.sample(t), "periodic", out)

    def _run_event(self, event: Any, out: list[Message | Storm]) -> None:
        slot = self.by_name[event.device]
        samples = slot.device.act(self.t, event.action, event.duration, event.value)
        self.counts["events"] += 1
        if samples:
            self._emit(slot, samples, "event", out)

    def _emit(
        self, slot: _Slot, samples: list[Sample], reason: Reason, out: list[Message | Storm]
    ) -> None:
        for msg in slot.encoder.encode(samples, self.t + slot.skew, reason):
            self._fault(slot, msg, out)

    def _fault(self, slot: _Slot, msg: Message, out: list[Message | Storm]) -> None:
        fault = None
        if self._message_faults and msg.client == "main":
            u = self._fault_rng.random()
            for edge, name in self._message_faults:
                if u < edge:
                    fault = name
                    break
        if fault == "out_of_order" and slot.held is not None:
            fault = None  # one message held per device at a time
        self.sent += 1
        if fault is None:
            out.append(msg)
        else:
            self.counts[fault] += 1
            if fault == "malformed_json":
                body = msg.payload if msg.payload.startswith(b"{") else b'{"value": ' + msg.payload
                msg.payload = body[: max(1, len(body) // 2)]
                out.append(msg)
            elif fault == "wrong_type":
                msg.payload = _wrong_type(msg.payload)
                out.append(msg)
            elif fault == "oversized":
                spec = self.scenario.faults.oversized
                size = spec.size if spec and spec.size else 300_000
                msg.payload = msg.payload + b" " * max(0, size - len(msg.payload))
                out.append(msg)
            elif fault == "unknown_topic":
                msg.topic += "/unexpected"
                out.append(msg)
            elif fault == "duplicate":
                out.append(msg)
                out.append(
                    Message(
                        msg.topic, msg.payload, msg.qos, msg.retain, msg.client, msg.device, msg.ts
                    )
                )
            else:  # out_of_order
                slot.held = msg
                return
        if slot.held is not None and slot.held is not msg and msg.ts > slot.held.ts:
            out.append(slot.held)  # the held message goes out after a newer one
            slot.held = None

    @property
    def command_topics(self) -> set[str]:
        """Every topic a simulated device or Sparkplug node listens on."""
        return set(self.commands) | set(self.node_commands)

    def command(self, topic: str, payload: bytes) -> list[Message]:
        """A command arrived for a device: it obeys and reports its new state."""
        node = self.node_commands.get(topic)
        if node is not None:
            return self._node_command(node, payload)
        slot = self.commands.get(topic)
        if slot is None:
            return []
        word = slot.encoder.command_payload(topic, payload)
        if word is None:
            return []
        self.counts["commands"] += 1
        samples = slot.device.command(self.t, word)
        if not samples:
            return []
        return slot.encoder.command_reply(samples, self.t + slot.skew)

    def _node_command(self, node: SparkplugNode, payload: bytes) -> list[Message]:
        """`Node Control/Rebirth` = true: the node publishes NBIRTH and every DBIRTH again."""
        try:
            metrics = spb.decode_payload(payload).metrics
        except DecodeError:
            return []
        if not any(m.name == "Node Control/Rebirth" and m.value is True for m in metrics):
            return []
        self.counts["rebirths"] += 1
        node.born = False
        node.devices_born.clear()
        out: list[Message] = []
        for slot in self.slots:
            if isinstance(slot.encoder, SparkplugEncoder) and slot.encoder.node is node:
                samples = slot.device.sample(self.t)
                out += slot.encoder.encode(samples, self.t + slot.skew, "periodic")
        return out
