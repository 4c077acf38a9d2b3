"""Each payload format publishes what the real devices publish, with the QoS and retain asked."""

from __future__ import annotations

import threading
from typing import Any

import orjson
from simhelpers import Collector, scenario, subscribe_all

from gateway.ingest import sparkplug as spb
from gateway.services.mosquitto import Mosquitto
from gateway.testing import publisher, wait_until
from simulators.runner import ScenarioRunner


def play(broker: Mosquitto, collector: Collector, fleet: list[dict[str, Any]], **kw: Any) -> int:
    plan = scenario(fleet=fleet, **kw)
    report = ScenarioRunner(plan, broker.host, broker.port, realtime=False).run()
    assert wait_until(lambda: len(collector.snapshot()) >= report.published)
    return report.published


def test_zigbee2mqtt_device_state_with_linkquality_and_battery(
    broker: Mosquitto, collector: Collector
) -> None:
    fleet = [
        {"profile": "climate", "name": "bedroom-th", "format": "zigbee2mqtt", "interval": "5m"},
        {"profile": "contact", "name": "window", "format": "zigbee2mqtt", "interval": "5m"},
    ]
    play(broker, collector, fleet)
    th = [orjson.loads(m.payload) for m in collector.on("zigbee2mqtt/bedroom-th")]
    assert len(th) == 12
    assert all({"temperature", "humidity", "battery", "linkquality"} <= set(b) for b in th)
    assert all(0 <= b["linkquality"] <= 255 and 0 <= b["battery"] <= 100 for b in th)
    window = [orjson.loads(m.payload) for m in collector.on("zigbee2mqtt/window")]
    assert all(b["contact"] is True for b in window)  # Zigbee2MQTT: true means closed


def test_tasmota_sensor_and_state_telemetry(broker: Mosquitto, collector: Collector) -> None:
    fleet = [{"profile": "plug", "name": "tv-plug", "format": "tasmota", "interval": "10m"}]
    play(broker, collector, fleet)
    sensor = [orjson.loads(m.payload) for m in collector.on("tele/tv-plug/SENSOR")]
    state = [orjson.loads(m.payload) for m in collector.on("tele/tv-plug/STATE")]
    assert len(sensor) == len(state) == 6
    first = sensor[0]
    assert first["Time"].startswith("2026-01-15T00:")
    assert set(first["ENERGY"]) == {"Power", "Total", "Voltage"}
    assert state[0]["POWER"] == "ON" and "RSSI" in state[0]["Wifi"]
    assert state[-1]["UptimeSec"] > state[0]["UptimeSec"]


def test_shelly_full_status_then_partial_updates(broker: Mosquitto, collector: Collector) -> None:
    fleet = [
        {
            "profile": "plug",
            "name": "shellyplus1pm-a1",
            "format": "shelly",
            "interval": "1m",
            "options": {"full_every": 20},
        }
    ]
    play(broker, collector, fleet)
    notes = [orjson.loads(m.payload) for m in collector.on("shellyplus1pm-a1/events/rpc")]
    assert notes[0]["method"] == "NotifyFullStatus"
    assert notes[0]["src"] == "shellyplus1pm-a1"
    switch = notes[0]["params"]["switch:0"]
    assert {"id", "output", "apower", "voltage", "aenergy"} <= set(switch)
    partial = [n for n in notes if n["method"] == "NotifyStatus"]
    assert len(partial) > 40
    # Partial updates carry only what changed: output stays ON, so it is never repeated.
    assert all("output" not in n["params"]["switch:0"] for n in partial)
    assert all("apower" in n["params"]["switch:0"] for n in partial)
    assert sum(n["method"] == "NotifyFullStatus" for n in notes) == 3  # every 20th report
    assert all(isinstance(n["params"]["ts"], float) for n in notes)


def test_statestream_states_and_attributes(broker: Mosquitto, collector: Collector) -> None:
    fleet: list[dict[str, Any]] = [
        {"profile": "climate", "name": "hall", "format": "statestream", "interval": "30m"},
        {"profile": "motion", "name": "hall-pir", "format": "statestream", "interval": "30m"},
        {
            "profile": "motion",
            "name": "old-pir",
            "format": "statestream",
            "interval": "30m",
            "options": {"legacy_states": True},
        },
    ]
    play(broker, collector, fleet)
    base = "homeassistant/sensor/hall_temperature"
    states = collector.on(f"{base}/state")
    # JSON-encoded, as current Home Assistant sends states
    assert len(states) == 2 and all(float(orjson.loads(m.payload)) for m in states)
    assert [m.payload for m in collector.on(f"{base}/unit_of_measurement")] == [b'"\xc2\xb0C"']
    assert [
        m.payload for m in collector.on("homeassistant/binary_sensor/hall_pir_occupancy/state")
    ] == [
        b'"off"',
        b'"off"',
    ]
    old = collector.on("homeassistant/binary_sensor/old_pir_occupancy/state")
    assert [m.payload for m in old] == [
        b"off",
        b"off",
    ]  # plain text, as older Home Assistant sent states
    updated = collector.on(f"{base}/last_updated")
    assert orjson.loads(updated[0].payload).startswith("2026-01-15T00:")


def test_sparkplug_births_aliases_seq_and_death_certificate(
    broker: Mosquitto, collector: Collector
) -> None:
    fleet = [
        {
            "profile": "meter",
            "name": "meter-{n}",
            "count": 3,
            "format": "sparkplug",
            "node": "edge-7",
            "interval": "1m",
        },
    ]
    plan = scenario(fleet=fleet, site="plant", duration="2h", qos=0)
    runner = ScenarioRunner(plan, broker.host, broker.port, realtime=False)
    report = runner.run()
    assert wait_until(lambda: len(collector.snapshot()) >= report.published)
    messages = collector.on("spBv1.0/plant/")
    kinds = [m.topic.split("/")[2] for m in messages]
    assert kinds[0] == "NBIRTH"
    assert kinds.count("NBIRTH") == 1 and kinds.count("DBIRTH") == 3
    decoded = [spb.decode_payload(m.payload) for m in messages]
    birth = decoded[0]
    assert birth.seq == 0
    assert [m.name for m in birth.metrics] == ["bdSeq", "Node Control/Rebirth"]
    bd_seq = birth.metrics[0].value
    # Births name every metric with an alias and a datatype; data use the alias only.
    dbirths = [d for d, k in zip(decoded, kinds, strict=True) if k == "DBIRTH"]
    assert all(
        m.name in ("power", "energy", "battery") and m.alias and m.datatype
        for d in dbirths
        for m in d.metrics
    )
    ddata = [d for d, k in zip(decoded, kinds, strict=True) if k == "DDATA"]
    assert len(ddata) > 300 and all(m.name is None and m.alias for d in ddata for m in d.metrics)
    # seq counts every message of the node, 0..255, and wraps.
    seqs = [d.seq for d in decoded]
    assert seqs == [i % 256 for i in range(len(seqs))] and len(seqs) > 256
    assert all(not m.retain for m in messages) and all(m.qos == 0 for m in messages)

    # The node's session registered NDEATH (with the birth's bdSeq) as its MQTT will.
    deaths = subscribe_all(broker, "spBv1.0/plant/NDEATH/#", client_id="deaths")
    live = ScenarioRunner(plan, broker.host, broker.port, speed=60)
    stop = threading.Event()
    player = threading.Thread(target=live.run, args=(stop,))
    player.start()
    try:
        assert wait_until(lambda: "spb:plant/edge-7" in live.clients)
        node = live.clients["spb:plant/edge-7"]
        assert wait_until(node.is_connected)
        sock = node.socket()
        assert sock is not None
        sock.close()  # a dropped link, not a clean DISCONNECT: the broker sends the will
        assert wait_until(lambda: len(deaths.snapshot()) == 1)
    finally:
        stop.set()
        player.join(10)
        deaths.client.disconnect()
        deaths.client.loop_stop()
    death = spb.decode_payload(deaths.snapshot()[0].payload)
    assert [(m.name, m.value) for m in death.metrics] == [("bdSeq", bd_seq)]
    assert death.seq is None


def test_qos_and_retain_are_configurable(broker: Mosquitto) -> None:
    fleet = [
        {"profile": "co2", "name": "kept", "interval": "30m", "qos": 1, "retain": True},
        {"profile": "co2", "name": "fleeting", "interval": "30m", "qos": 0, "retain": False},
    ]
    plan = scenario(fleet=fleet)
    ScenarioRunner(plan, broker.host, broker.port, realtime=False).run()
    # A subscriber that comes later gets only the retained value, flagged as retained.
    late = subscribe_all(broker, "sensors/#", client_id="late")
    try:
        assert wait_until(lambda: len(late.snapshot()) >= 1)
        got = late.snapshot()
        assert [(m.topic, m.retain) for m in got] == [("sensors/home/kept/co2", True)]
    finally:
        late.client.disconnect()
        late.client.loop_stop()
    live = subscribe_all(broker, "sensors/#", client_id="live")
    try:
        ScenarioRunner(plan, broker.host, broker.port, realtime=False, seed=2).run()
        assert wait_until(lambda: len(live.on("sensors/home/fleeting")) == 2)
        qos = {m.topic: m.qos for m in live.snapshot() if not m.retain}
        assert qos == {"sensors/home/kept/co2": 1, "sensors/home/fleeting/co2": 0}
    finally:
        live.client.disconnect()
        live.client.loop_stop()


def test_sparkplug_node_is_born_again_on_a_rebirth_request(
    broker: Mosquitto, collector: Collector
) -> None:
    fleet = [
        {
            "profile": "climate",
            "name": "th-{n}",
            "count": 2,
            "format": "sparkplug",
            "node": "edge-9",
            "interval": "1m",
        },
    ]
    plan = scenario(fleet=fleet, site="plant", duration="2h", qos=0)
    runner = ScenarioRunner(plan, broker.host, broker.port, speed=60)
    stop = threading.Event()
    player = threading.Thread(target=runner.run, args=(stop,))
    player.start()

    def kinds() -> list[str]:
        return [m.topic.split("/")[2] for m in collector.on("spBv1.0/plant/")]

    try:
        assert wait_until(lambda: "DDATA" in kinds())
        rebirth = spb.Payload(metrics=[spb.Metric("Node Control/Rebirth", True, spb.BOOLEAN)])
        cmd = publisher(broker.host, broker.port, "host-app")
        cmd.publish("spBv1.0/plant/NCMD/edge-9", spb.encode_payload(rebirth), qos=1)
        assert wait_until(lambda: kinds().count("NBIRTH") == 2 and kinds().count("DBIRTH") == 4)
        cmd.loop_stop()
    finally:
        stop.set()
        player.join(10)
    messages = collector.on("spBv1.0/plant/")
    second = [m for m in messages if m.topic.endswith("NBIRTH/edge-9")][1]
    births = [spb.decode_payload(m.payload) for m in messages if "BIRTH" in m.topic]
    assert spb.decode_payload(second.payload).seq == 0
    # The same session, so the same bdSeq; every device is born again with every metric.
    assert births[0].metrics[0].value == births[3].metrics[0].value
    assert {m.name for m in births[4].metrics} == {"temperature", "humidity", "battery"}
