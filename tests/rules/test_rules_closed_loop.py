"""The rules engine inside a running gateway: a real Mosquitto, the demo's smart-home rules, the
buffer's alerts table, and state that survives a restart."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pyarrow as pa
from paho.mqtt.enums import CallbackAPIVersion

from gateway.buffer.store import BufferStore
from gateway.config import (
    ApiConfig,
    BufferConfig,
    GatewayConfig,
    LocationConfig,
    MqttConfig,
    RulesConfig,
    Subscription,
)
from gateway.model import DECODED_QUARANTINE_SCHEMA, IngestBatch
from gateway.rules.actions import AlertChange
from gateway.rules.service import RulesService
from gateway.rules.testing import R, readings
from gateway.services.mosquitto import Mosquitto
from gateway.testing import GatewayThread, publisher, wait_until

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"


def noon_now() -> LocationConfig:
    """A place on the equator where it is about midday right now: broad daylight."""
    hours = (time.time() % 86400) / 3600
    longitude = ((12 - hours) * 15 + 180) % 360 - 180
    return LocationConfig(latitude=0.0, longitude=round(longitude, 3), timezone="UTC")


def rules_gateway(
    broker: Mosquitto,
    tmp_path: Path,
    client_id: str,
    files: list[Path],
    location: LocationConfig | None = None,
) -> GatewayConfig:
    """A gateway on the test broker with these rule files, its buffer in tmp_path, no API."""
    return GatewayConfig(
        mqtt=MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id=client_id,
            subscriptions=[Subscription(topic="sensors/#", qos=1)],
        ),
        buffer=BufferConfig(path=tmp_path / "buffer.duckdb"),
        api=ApiConfig(enabled=False),
        rules=RulesConfig(files=files),
        location=location or LocationConfig(),
    )


class Listener:
    """A subscriber that records what arrives on a topic filter."""

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-listener")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        assert self._subscribed.wait(10)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def received(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_motion_after_dark_or_in_low_light_switches_the_hallway_light(
    broker: Mosquitto, tmp_path: Path
) -> None:
    config = rules_gateway(
        broker,
        tmp_path,
        "gw-rules",
        [RULES_DIR / "smart-home.yaml", RULES_DIR / "thresholds.yaml"],
        location=noon_now(),
    )
    listener = Listener(broker, "commands/home/#")
    pub = publisher(broker.host, broker.port)
    try:
        with GatewayThread(config) as gw:
            service = gw.gateway.rules
            assert service is not None

            def send(topic: str, payload: str) -> None:
                pub.publish(f"sensors/home/{topic}", payload, qos=1).wait_for_publish(5)

            # daylight and a bright hallway: motion does not switch the light. (The first
            # reading is repeated until it arrives: the gateway reports connected just before
            # the broker confirms its subscription.)
            def first_reading_arrived() -> bool:
                send("hallway-lux/illuminance", "300")
                return wait_until(lambda: gw.committed_readings() > 0, timeout=0.5)

            assert wait_until(first_reading_arrived)
            send("hallway-motion/occupancy", "true")
            assert wait_until(lambda: service.counters()["conditions_false"] >= 1)
            send("hallway-motion/occupancy", "false")
            # the hallway gets dark (lux below 50): the next motion does
            send("hallway-lux/illuminance", '{"value": 20, "unit": "lx"}')
            send("hallway-motion/occupancy", "true")
            assert wait_until(lambda: len(listener.received()) >= 1)
            assert listener.received() == [("commands/home/hallway-light/set", b"ON")]
            assert service.counters()["commands_published"] == 1

            # a leak shuts the valve and raises a critical alert, stored in the buffer
            send("kitchen-leak/water_leak", "true")
            assert wait_until(lambda: len(listener.received()) >= 2)
            assert listener.received()[1] == ("commands/home/kitchen-valve/set", b"OFF")
            store = gw.gateway.store
            assert store is not None

            def alerts() -> list[dict[str, Any]]:
                sql = "SELECT rule_id, device, severity, state FROM alerts ORDER BY id"
                rows: list[dict[str, Any]] = store.query(sql).to_pylist()
                return rows

            assert wait_until(lambda: len(alerts()) >= 1)
            assert alerts() == [
                {
                    "rule_id": "kitchen-leak-shut-valve",
                    "device": "kitchen-leak",
                    "severity": "critical",
                    "state": "raised",
                }
            ]
    finally:
        pub.loop_stop()
        pub.disconnect()
        listener.close()


FREEZER_RULE = """
rules:
  - id: freezer-warm
    select: {device: freezer, metric: temperature}
    trigger: {type: threshold, above: -15, for: 10m}
    actions: [{alert: {severity: critical, message: "freezer at {value}"}}]
"""


async def direct(fn: Any, *args: Any) -> Any:
    return fn(*args)


def service_for(store: BufferStore, files: list[Path]) -> RulesService:
    return RulesService(
        RulesConfig(files=files, allowed_lateness=2.0),
        LocationConfig(),
        store=store,
        on_writer=direct,
        publish=None,
    )


def stored_alerts(store: BufferStore) -> list[tuple[Any, ...]]:
    sql = "SELECT epoch(alert_time), rule_id, state FROM alerts ORDER BY id"
    return [tuple(r.values()) for r in store.query(sql).to_pylist()]


def test_restart_mid_for_fires_once_from_saved_state(tmp_path: Path) -> None:
    asyncio.run(restart_mid_for(tmp_path))


async def restart_mid_for(tmp_path: Path) -> None:
    rule_file = tmp_path / "freezer.yaml"
    rule_file.write_text(FREEZER_RULE)
    store = BufferStore(tmp_path / "buffer.duckdb")
    try:
        first = service_for(store, [rule_file])
        await first.start()
        await first.on_batch(readings([R(100, "freezer", "temperature", -10)]))
        await first.tick(400.0)
        await first.close()  # the gateway stops 300 s into the 10-minute `for`

        second = service_for(store, [rule_file])
        await second.start()
        await second.tick(650.0)
        assert stored_alerts(store) == []
        await second.tick(702.5)
        await second.tick(5000.0)
        assert stored_alerts(store) == [(700.0, "freezer-warm", "raised")]
        await second.close()

        third = service_for(store, [rule_file])  # and once more: nothing fires twice
        await third.start()
        await third.on_batch(readings([R(5001, "freezer", "temperature", -10)]))
        await third.tick(9000.0)
        assert stored_alerts(store) == [(700.0, "freezer-warm", "raised")]
    finally:
        store.close()


def commit(store: BufferStore, rows: list[R]) -> pa.Table:
    """Commit readings to the buffer as ingest does; returns them with their ids."""
    decoded = readings(rows).drop_columns(["id", "event_id"])
    return store.append(IngestBatch(decoded, DECODED_QUARANTINE_SCHEMA.empty_table()), []).readings


def test_crash_replays_committed_readings_without_repeating_stored_alerts(tmp_path: Path) -> None:
    asyncio.run(crash_replay(tmp_path))


async def crash_replay(tmp_path: Path) -> None:
    rule_file = tmp_path / "freezer.yaml"
    rule_file.write_text(FREEZER_RULE)
    store = BufferStore(tmp_path / "buffer.duckdb")
    try:
        first = service_for(store, [rule_file])
        await first.start()
        await first.on_batch(commit(store, [R(0, "freezer", "temperature", -18)]))
        await first.on_batch(commit(store, [R(100, "freezer", "temperature", -10)]))
        await first.save()  # the last state saved: the `for` pending since t=100
        await first.on_batch(commit(store, [R(200, "freezer", "temperature", -9)]))
        await first.tick(702.5)
        assert stored_alerts(store) == [(700.0, "freezer-warm", "raised")]
        # committed, then the gateway crashed before the rules saw it (and without saving)
        commit(store, [R(800, "freezer", "temperature", -19)])

        second = service_for(store, [rule_file])
        await second.start()
        # the replay re-derives the raise at 700 (already stored: not written again) and the
        # clear at 800 that the crash lost
        assert stored_alerts(store) == [
            (700.0, "freezer-warm", "raised"),
            (800.0, "freezer-warm", "cleared"),
        ]
        assert second.engine is not None
        assert second.engine.alerts == {}
    finally:
        store.close()


def test_reload_of_a_broken_set_keeps_the_old_one(tmp_path: Path) -> None:
    asyncio.run(reload_broken_set(tmp_path))


async def reload_broken_set(tmp_path: Path) -> None:
    rule_file = tmp_path / "freezer.yaml"
    rule_file.write_text(FREEZER_RULE)
    store = BufferStore(tmp_path / "buffer.duckdb")
    try:
        service = service_for(store, [rule_file])
        await service.start()
        running = service.engine
        rule_file.write_text(FREEZER_RULE.replace("above: -15", "above: cold"))
        errors = service.reload()
        assert f"{rule_file}: invalid rules" in errors
        assert (
            "  rule 'freezer-warm': trigger.threshold.above: Input should be a valid number, "
            "unable to parse string as a number" in errors
        )
        assert service.engine is running
        # the old set still works: the pending `for` started before the reload fires
        await service.on_batch(readings([R(0, "freezer", "temperature", -10)]))
        rule_file.write_text(FREEZER_RULE.replace("10m", "1m"))
        assert service.reload() == []
        assert service.engine is not running
        await service.on_batch(readings([R(1, "freezer", "temperature", -9)]))
        await service.tick(70.0)
        # the changed rule started afresh at t=1 (-9 is a first reading past -15), so 61 s
        assert stored_alerts(store) == [(61.0, "freezer-warm", "raised")]
    finally:
        store.close()


def test_alert_rows_match_the_alerts_table(tmp_path: Path) -> None:
    from gateway.rules.state import alerts_table

    store = BufferStore(tmp_path / "buffer.duckdb")
    try:
        change = AlertChange("r", "d", "m", 1.5, "warning", "raised", "msg", 2.0, "e-1")
        store.append_alerts(alerts_table([change]))
        assert stored_alerts(store) == [(1.5, "r", "raised")]
        assert isinstance(alerts_table([]), pa.Table)
    finally:
        store.close()


def test_retained_messages_prime_the_rules_without_firing(tmp_path: Path) -> None:
    from gateway.config import GatewayConfig
    from gateway.ingest.decoding import BatchDecoder
    from gateway.ingest.redelivery import RedeliveryFilter
    from gateway.ingest.routing import TopicRouter
    from gateway.model import RawMessage

    rule_file = tmp_path / "freezer.yaml"
    rule_file.write_text(FREEZER_RULE.replace("for: 10m", "for: 0s"))
    store = BufferStore(tmp_path / "buffer.duckdb")
    seen = RedeliveryFilter()
    decoder = BatchDecoder(TopicRouter(GatewayConfig().routes), seen, 10_000)

    def message(mid: int, value: str, *, retain: bool = False, dup: bool = False) -> RawMessage:
        topic = "sensors/home/freezer/temperature"
        return RawMessage(topic, value.encode(), 1, mid, dup, retain, 1000.0 + mid)

    async def main() -> RulesService:
        service = RulesService(
            RulesConfig(files=[rule_file]),
            LocationConfig(),
            store=store,
            on_writer=direct,
            publish=None,
        )
        await service.start()
        messages = [
            message(1, "-10", retain=True),  # the broker's stored state: already warm
            message(2, "-9"),  # still warm: no crossing
            message(3, "-18"),
            message(4, "-10"),  # a real crossing
            message(4, "-10", dup=True),  # the broker redelivers it: not evaluated twice
        ]
        for m in messages:  # one batch each, as the gateway's pipeline hands them over
            batch = decoder.decode([m], service.evaluate)
            seen.remember(batch.messages)
            await asyncio.sleep(0)  # let the event loop drain, as live
        await service.close()
        return service

    try:
        service = asyncio.run(main())
        assert stored_alerts(store) == [(1004.0, "freezer-warm", "raised")]
        assert service.engine is not None
        assert service.engine.stats.primed == 1
        assert service.engine.stats.readings == 4
    finally:
        store.close()


SIGHUP_RULE = """
rules:
  - id: fan
    select: {device: room, metric: temperature}
    trigger: {type: threshold, above: 30}
    actions: [{mqtt: {topic: commands/home/room-fan/set, payload: "VERSION"}}]
"""


def test_sighup_reloads_the_rules_of_a_running_gateway(broker: Mosquitto, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    rule_file = tmp_path / "fan.yaml"
    rule_file.write_text(SIGHUP_RULE.replace("VERSION", "v1"))
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"""
mqtt: {{host: {broker.host}, port: {broker.port}, client_id: gw-sighup}}
buffer: {{path: {tmp_path / "buffer.duckdb"}}}
api: {{enabled: false}}
rules: {{files: [{rule_file}], reload: false}}
"""
    )
    log_path = tmp_path / "gateway.log"
    listener = Listener(broker, "commands/home/#")
    pub = publisher(broker.host, broker.port)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        assert wait_until(lambda: "rules engine running 1 rules" in log_path.read_text(), 30)

        def cross_until(count: int) -> bool:
            for value in ("29", "31"):
                pub.publish("sensors/home/room/temperature", value, qos=1).wait_for_publish(5)
            return wait_until(lambda: len(listener.received()) >= count, timeout=1.0)

        assert wait_until(lambda: cross_until(1))
        rule_file.write_text(SIGHUP_RULE.replace("VERSION", "v2"))
        process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "rules reloaded: 1 rules" in log_path.read_text())
        count = len(listener.received())
        assert wait_until(lambda: cross_until(count + 1))
        payloads = [payload for _, payload in listener.received()]
        assert payloads[0] == b"v1"
        assert payloads[-1] == b"v2"
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        pub.loop_stop()
        pub.disconnect()
        listener.close()


ALARM_RULE = """
rules:
  - id: boiler-hot
    select: {device: boiler, metric: temperature}
    trigger: {type: threshold, above: 50}
    actions:
      - mqtt: {topic: "commands/home/{device}/alarm", payload: "{value}"}
"""


def test_every_reading_is_evaluated_before_its_commit(broker: Mosquitto, tmp_path: Path) -> None:
    """A crash right after a commit must not leave a committed reading whose commands were never
    sent (a restart's replay does not send them): the pipeline hands each decoded batch to the
    rules before it commits it, and every commit finds its readings evaluated."""
    rule_file = tmp_path / "boiler.yaml"
    rule_file.write_text(ALARM_RULE)
    config = rules_gateway(broker, tmp_path, "gw-rules-before-commit", [rule_file])
    listener = Listener(broker, "commands/home/#")
    pub = publisher(broker.host, broker.port)
    try:
        with GatewayThread(config) as gw:
            service = gw.gateway.rules
            assert service is not None and service.engine is not None
            engine = service.engine
            evaluated_at_commit: list[tuple[int, int]] = []
            committed = 0

            async def check(readings: pa.Table) -> None:
                nonlocal committed
                committed += readings.num_rows
                evaluated_at_commit.append((engine.stats.readings, committed))

            gw.gateway.listeners.insert(0, check)
            values = [60, 40] * 10  # ten crossings above 50
            for value in values:
                info = pub.publish("sensors/home/boiler/temperature", str(value), qos=1)
                info.wait_for_publish(5)
            assert wait_until(lambda: gw.committed_readings() >= len(values))
            assert wait_until(lambda: len(listener.received()) >= 10)
    finally:
        pub.loop_stop()
        pub.disconnect()
        listener.close()
    assert [payload for _, payload in listener.received()] == [b"60"] * 10
    assert evaluated_at_commit
    assert all(evaluated >= done for evaluated, done in evaluated_at_commit)
