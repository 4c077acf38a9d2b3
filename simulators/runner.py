"""Runs a scenario against a broker: paces simulated time, publishes, obeys commands, checks.

Simulated time runs `speed` times faster than wall time from the scenario's `start` (a day in a
minute is speed 1440). With `realtime=False` it runs as fast as the broker takes it, which is how
tests get a day of readings in a second. Commands to devices and the messages named in the
scenario's `expect:` are received on the simulator's own connection.
"""

from __future__ import annotations

import logging
import queue
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from simulators.engine import Simulation, Storm
from simulators.formats import Message
from simulators.scenario import Scenario

logger = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class Arrival:
    """A message the simulator saw on an expected topic, at simulated time `t`."""

    t: float
    topic: str
    payload: bytes


@dataclass
class RunReport:
    published: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    arrivals: list[Arrival] = field(default_factory=list)
    met: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    storm_connections: int = 0
    sim_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.missed


def _mqtt_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def connect_packet(client_id: str, keepalive: int = 60) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session."""
    body = _mqtt_string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", keepalive)
    body += _mqtt_string(client_id)
    return b"\x10" + _remaining_length(len(body)) + body


def reconnect_storm(host: str, port: int, size: int, prefix: str) -> int:
    """`size` clients connect at once and drop without DISCONNECT; returns how many got CONNACK."""
    sockets: list[socket.socket] = []
    accepted = 0
    try:
        for i in range(size):
            sock = socket.create_connection((host, port), timeout=5)
            sockets.append(sock)
            sock.sendall(connect_packet(f"{prefix}-{i}"))
        for sock in sockets:
            ack = b""
            while len(ack) < 4:
                chunk = sock.recv(4 - len(ack))
                if not chunk:
                    break
                ack += chunk
            if len(ack) == 4 and ack[0] == 0x20 and ack[3] == 0:
                accepted += 1
    finally:
        for sock in sockets:
            sock.close()  # no DISCONNECT: to the broker this looks like a dropped link
    return accepted


def _payload_matches(expected: str, got: bytes) -> bool:
    text = got.decode("utf-8", "replace").strip()
    if text == expected.strip():
        return True
    try:
        return bool(orjson.loads(text) == orjson.loads(expected))
    except orjson.JSONDecodeError:
        return False


def evaluate(scenario: Scenario, arrivals: list[Arrival]) -> tuple[list[str], list[str]]:
    """(met, missed): one line per expectation, saying what arrived or what did not."""
    met: list[str] = []
    missed: list[str] = []

    def clock(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S")

    for exp in scenario.expect:
        by = scenario.time(exp.by)
        after = scenario.time(exp.after) if exp.after else scenario.start_ts
        on_topic = [a for a in arrivals if paho.topic_matches_sub(exp.topic, a.topic)]
        right = [
            a for a in on_topic if exp.payload is None or _payload_matches(exp.payload, a.payload)
        ]
        in_time = [a for a in right if after <= a.t <= by]
        what = exp.describe()
        if in_time:
            met.append(f"{what}: at {clock(in_time[0].t)} (by {clock(by)})")
        elif right:
            missed.append(
                f"{what}: expected between {clock(after)} and {clock(by)}, "
                f"came at {clock(right[0].t)}"
            )
        elif on_topic:
            seen = on_topic[-1].payload.decode("utf-8", "replace")[:60]
            missed.append(f"{what}: by {clock(by)}; only other payloads arrived (last {seen!r})")
        else:
            missed.append(f"{what}: nothing arrived on {exp.topic} by {clock(by)}")
    return met, missed


class ScenarioRunner:
    """`ScenarioRunner(scenario, host, port).run(stop)` plays the scenario and returns a report."""

    def __init__(
        self,
        scenario: Scenario,
        host: str,
        port: int,
        *,
        seed: int | None = None,
        speed: float | None = None,
        realtime: bool = True,
        check: bool = False,
        client_prefix: str = "sim",
    ) -> None:
        self.scenario = scenario
        self.host = host
        self.port = port
        self.sim = Simulation(scenario, seed=seed)
        self.speed = speed or scenario.speed
        # Expectations have deadlines in simulated time, which only means something when simulated
        # time follows the wall clock; so checking always plays in (scaled) real time.
        self.realtime = realtime or check
        self.check = check
        self.prefix = f"{client_prefix}-{scenario.name}-{self.sim.seed}"
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._wake = threading.Event()
        self._dropped: queue.Queue[str] = queue.Queue()
        self._subscribed = threading.Event()
        self._clients: dict[str, paho.Client] = {}
        self._last: dict[str, paho.MQTTMessageInfo] = {}
        self._expect_filters = [e.topic for e in scenario.expect]

    # -- connections -----------------------------------------------------------------------
    def _connect(self, key: str, will: tuple[str, bytes] | None) -> paho.Client:
        client_id = self.prefix if key == "main" else f"{self.prefix}-{key.replace('/', '-')}"
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        client.max_queued_messages_set(0)
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=False)
        connected = threading.Event()

        def on_connect(c: paho.Client, *_: object) -> None:
            connected.set()
            if key == "main":
                self._on_connect(c)

        client.on_connect = on_connect
        if key == "main":
            client.on_message = self._on_message
            client.on_subscribe = lambda *_: self._subscribed.set()
        else:
            client.on_disconnect = lambda *_: self._dropped.put(key)
        client.connect(self.host, self.port, keepalive=30)
        client.loop_start()
        if not connected.wait(10):
            client.loop_stop()
            raise ConnectionError(f"no CONNACK from {self.host}:{self.port} for {client_id}")
        return client

    @property
    def clients(self) -> dict[str, paho.Client]:
        """The live MQTT connections by session key (`main`, `spb:<group>/<node>`)."""
        return dict(self._clients)

    def _on_connect(self, client: paho.Client) -> None:
        topics = self.sim.command_topics | set(self._expect_filters)
        if topics:
            client.subscribe([(t, 1) for t in sorted(topics)])

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        self._inbox.put((msg.topic, bytes(msg.payload)))
        self._wake.set()

    def _publish(self, out: list[Message | Storm], report: RunReport) -> None:
        for item in out:
            if isinstance(item, Storm):
                report.storm_connections += reconnect_storm(
                    self.host, self.port, item.size, f"{self.prefix}-storm-{int(item.t)}"
                )
                continue
            client = self._clients[item.client]
            self._last[item.client] = client.publish(
                item.topic, item.payload, item.qos, item.retain
            )
            report.published += 1

    # -- the loop --------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> RunReport:
        stop = stop or threading.Event()
        sim = self.sim
        report = RunReport()
        sessions = sim.sessions()
        try:
            for key, will in sessions.items():
                self._clients[key] = self._connect(key, will)
            # Subscribed before the first publish, so no command or expected message is missed.
            if (sim.command_topics or self._expect_filters) and not self._subscribed.wait(10):
                raise ConnectionError(f"{self.host}:{self.port} did not confirm the subscription")
            wall0 = time.monotonic()
            sim0 = sim.t
            last_by = max((self.scenario.time(e.by) for e in self.scenario.expect), default=0.0)

            def now() -> float:
                if not self.realtime:
                    return sim.t
                return sim0 + (time.monotonic() - wall0) * self.speed

            while not stop.is_set():
                target = now() if self.realtime else sim.next_time()
                self._rebirth()
                if not sim.finished:
                    self._publish(sim.advance(target), report)
                self._drain(now(), report)
                if self.check and self.scenario.expect:
                    met, _ = evaluate(self.scenario, report.arrivals)
                    if len(met) == len(self.scenario.expect):
                        break
                    if now() > last_by:  # every deadline has passed: the verdict is in
                        break
                elif sim.finished:
                    break
                if self.realtime:
                    wait = (min(sim.next_time(), sim.end) - now()) / self.speed
                    self._wake.wait(min(max(wait, 0.0), 0.05))  # a command wakes us early
                    self._wake.clear()
            for key, info in self._last.items():
                try:
                    info.wait_for_publish(10)
                except (RuntimeError, ValueError) as exc:  # that session dropped meanwhile
                    logger.warning("%s: last messages not confirmed: %s", key, exc)
            self._drain(now(), report)
            report.sim_seconds = sim.t - sim0
            report.wall_seconds = time.monotonic() - wall0
        finally:
            for client in self._clients.values():
                client.disconnect()
                client.loop_stop()
        report.counts = Counter(sim.counts)
        if self.scenario.expect:
            report.met, report.missed = evaluate(self.scenario, report.arrivals)
        return report

    def _rebirth(self) -> None:
        """A Sparkplug node lost its session: paho reconnects it (after a second at least), and
        the node must come back with the next bdSeq in its will and be born again."""
        while True:
            try:
                key = self._dropped.get_nowait()
            except queue.Empty:
                return
            will = self.sim.reconnected(key)
            if will is not None:
                self._clients[key].will_set(will[0], will[1], qos=1, retain=False)

    def _drain(self, t: float, report: RunReport) -> None:
        while True:
            try:
                topic, payload = self._inbox.get_nowait()
            except queue.Empty:
                return
            if any(paho.topic_matches_sub(f, topic) for f in self._expect_filters):
                report.arrivals.append(Arrival(t, topic, payload))
            if topic in self.sim.command_topics:
                self._publish(list(self.sim.command(topic, payload)), report)


def run_scenario(
    scenario: Scenario,
    host: str,
    port: int,
    stop: threading.Event | None = None,
    **options: object,
) -> RunReport:
    """Convenience wrapper: build a runner and play the scenario once."""
    return ScenarioRunner(scenario, host, port, **options).run(stop)  # type: ignore[arg-type]
