"""Sparkplug B, Shelly Gen2 and statestream decoding, end to end through a real Mosquitto."""

from __future__ import annotations

import socket
from pathlib import Path

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import ApiConfig, BufferConfig, GatewayConfig, MqttConfig, Subscription
from gateway.ingest import sparkplug as spb
from gateway.services.mosquitto import Mosquitto
from gateway.testing import GatewayThread, publisher, wait_until


def gateway_config(broker: Mosquitto, tmp_path: Path) -> GatewayConfig:
    topics = ["spBv1.0/#", "+/events/rpc", "homeassistant/#"]
    return GatewayConfig(
        mqtt=MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id="gw-stateful",
            subscriptions=[Subscription(topic=t, qos=1) for t in topics],
        ),
        buffer=BufferConfig(path=tmp_path / "buffer.duckdb"),
        api=ApiConfig(enabled=False),
    )


def rows(gw: GatewayThread, sql: str) -> list[dict[str, object]]:
    assert gw.gateway.store is not None
    return gw.gateway.store.query(sql).to_pylist()  # type: ignore[no-any-return]


def payload(seq: int | None, *metrics: spb.Metric, ts: int = 1_700_000_000_000) -> bytes:
    return spb.encode_payload(spb.Payload(timestamp=ts, seq=seq, metrics=list(metrics)))


def test_sparkplug_payload_round_trips_every_scalar_type() -> None:
    metrics = [
        spb.Metric("i8", -5, spb.INT8, alias=1),
        spb.Metric("i32", -70_000, spb.INT32, alias=2),
        spb.Metric("i64", -(2**40), spb.INT64, alias=3),
        spb.Metric("u64", 2**63 + 5, spb.UINT64, alias=4),
        spb.Metric("f", 1.5, spb.FLOAT, alias=5, timestamp=123),
        spb.Metric("d", -18.25, spb.DOUBLE, alias=6, is_historical=True),
        spb.Metric("b", True, spb.BOOLEAN, alias=7),
        spb.Metric("s", "läuft", spb.STRING, alias=8),
        spb.Metric("n", None, spb.DOUBLE, alias=9, is_null=True),
    ]
    decoded = spb.decode_payload(payload(200, *metrics))
    assert decoded.seq == 200
    assert decoded.timestamp == 1_700_000_000_000
    assert decoded.metrics == metrics


def test_sparkplug_aliases_seq_gaps_history_and_death(broker: Mosquitto, tmp_path: Path) -> None:
    node = "spBv1.0/factory/{}/edge-1"
    device = "spBv1.0/factory/{}/edge-1/press-7"
    with GatewayThread(gateway_config(broker, tmp_path)) as gw:
        # The node's session carries its death certificate as the MQTT will.
        edge = paho.Client(CallbackAPIVersion.VERSION2, client_id="edge-1")
        edge.will_set(
            node.format("NDEATH"), payload(None, spb.Metric("bdSeq", 3, spb.INT64)), qos=1
        )
        edge.connect(broker.host, broker.port)
        edge.loop_start()
        sent = [
            (node.format("NBIRTH"), payload(0, spb.Metric("bdSeq", 3, spb.INT64))),
            (
                device.format("DBIRTH"),
                payload(
                    1,
                    spb.Metric("Pressure", 101.5, spb.DOUBLE, alias=10),
                    spb.Metric("Running", True, spb.BOOLEAN, alias=11),
                ),
            ),
            (device.format("DDATA"), payload(2, spb.Metric(None, 102.0, alias=10))),
            # seq 3 and 4 were lost on the way: a gap.
            (device.format("DDATA"), payload(5, spb.Metric(None, False, alias=11))),
            (
                device.format("DDATA"),
                payload(
                    6,
                    spb.Metric(
                        None, 99.0, alias=10, timestamp=1_600_000_000_000, is_historical=True
                    ),
                ),
            ),
            (device.format("DDATA"), payload(7, spb.Metric(None, 1.0, alias=42))),  # never born
            ("spBv1.0/factory/NDATA/edge-2", payload(0, spb.Metric(None, 1.0, alias=1))),
        ]
        for topic, body in sent:
            edge.publish(topic, body, qos=1).wait_for_publish(5)
        assert wait_until(lambda: gw.gateway.stats.messages >= len(sent))
        # Drop the node's TCP connection without DISCONNECT: the broker publishes the will.
        edge.loop_stop()
        sock = edge.socket()
        assert isinstance(sock, socket.socket)
        sock.close()
        assert wait_until(lambda: gw.gateway.stats.messages >= len(sent) + 1)

        readings = rows(
            gw,
            "SELECT device, metric, value, text, tags, epoch_ms(event_time) AS ms "
            "FROM readings ORDER BY id",
        )
        press = [(r["metric"], r["value"]) for r in readings if r["device"] == "press-7"]
        assert press == [
            ("availability", 1.0),
            ("Pressure", 101.5),
            ("Running", 1.0),
            ("Pressure", 102.0),
            ("Running", 0.0),
            ("Pressure", 99.0),
            ("availability", 0.0),  # the node's death is its devices' too
        ]
        gaps = [r for r in readings if r["metric"] == "sparkplug.seq_gaps"]
        assert [(g["device"], g["value"]) for g in gaps] == [("edge-1", 1.0)]
        historical = [r for r in readings if r["value"] == 99.0]
        assert orjson.loads(str(historical[0]["tags"])) == {
            "group": "factory",
            "historical": "true",
            "node": "edge-1",
        }
        assert historical[0]["ms"] == 1_600_000_000_000
        live = [r for r in readings if r["value"] == 102.0]
        assert "historical" not in orjson.loads(str(live[0]["tags"]))
        node_states = [
            r["text"] for r in readings if r["device"] == "edge-1" and r["metric"] == "availability"
        ]
        assert node_states == ["online", "offline"]  # NBIRTH, then NDEATH from the will
        reasons = [r["reason"] for r in rows(gw, "SELECT reason FROM quarantine ORDER BY id")]
        assert len(reasons) == 2
        assert "alias 42 was not declared" in str(reasons[0])
        assert "no NBIRTH seen for node factory/edge-2" in str(reasons[1])


def test_sparkplug_seq_wraps_from_255_to_0_without_a_gap(broker: Mosquitto, tmp_path: Path) -> None:
    topic = "spBv1.0/g/NDATA/n"
    with GatewayThread(gateway_config(broker, tmp_path)) as gw:
        pub = publisher(broker.host, broker.port)
        bodies = [payload(0, spb.Metric("x", 1.0, spb.DOUBLE, alias=1))]
        bodies += [
            payload(seq % 256, spb.Metric(None, float(seq), alias=1)) for seq in range(1, 300)
        ]
        pub.publish("spBv1.0/g/NBIRTH/n", bodies[0], qos=1).wait_for_publish(5)
        for body in bodies[1:]:
            pub.publish(topic, body, qos=1).wait_for_publish(5)
        pub.loop_stop()
        assert wait_until(lambda: gw.gateway.stats.messages >= len(bodies))
        assert rows(gw, "SELECT count(*) AS n FROM readings WHERE metric = 'x'") == [{"n": 300}]
        assert rows(gw, "SELECT count(*) AS n FROM readings WHERE metric LIKE '%gaps'") == [
            {"n": 0}
        ]


def shelly(method: str, **params: object) -> bytes:
    return orjson.dumps({"src": "shellyplus1pm-1", "method": method, "params": params})


def test_shelly_partial_status_is_merged_onto_the_last_full_status(
    broker: Mosquitto, tmp_path: Path
) -> None:
    topic = "shellyplus1pm-1/events/rpc"
    sent = [
        shelly("NotifyStatus", ts=1_700_000_000.5, **{"switch:0": {"id": 0, "apower": 7.0}}),
        shelly(
            "NotifyFullStatus",
            ts=1_700_000_010,
            **{
                "switch:0": {"id": 0, "output": True, "apower": 12.5, "aenergy": {"total": 1000}},
                "sys": {"uptime": 100},
            },
        ),
        shelly("NotifyStatus", ts=1_700_000_020, **{"switch:0": {"id": 0, "apower": 40.0}}),
        shelly(
            "NotifyEvent",
            ts=1_700_000_030,
            events=[{"component": "input:0", "id": 0, "event": "single_push"}],
        ),
        b'{"method": "NotifyStatus"}',
    ]
    with GatewayThread(gateway_config(broker, tmp_path)) as gw:
        pub = publisher(broker.host, broker.port)
        for body in sent:
            pub.publish(topic, body, qos=1).wait_for_publish(5)
        pub.loop_stop()
        assert wait_until(lambda: gw.gateway.stats.messages >= len(sent))
        readings = rows(
            gw,
            "SELECT metric, value, text, unit, epoch(event_time) AS ts FROM readings "
            "WHERE device = 'shellyplus1pm-1' ORDER BY id",
        )
        by_time: dict[float, dict[str, object]] = {}
        for r in readings:
            by_time.setdefault(float(str(r["ts"])), {})[str(r["metric"])] = (
                r["value"] if r["text"] is None else r["text"]
            )
        assert by_time[1_700_000_000.5] == {"switch:0.apower": 7.0}  # before any full status
        assert by_time[1_700_000_010.0] == {
            "switch:0.output": "true",
            "switch:0.apower": 12.5,
            "switch:0.aenergy.total": 1000.0,
            "sys.uptime": 100.0,
        }
        # The partial update: apower changed, output and energy carried over from the full one.
        assert by_time[1_700_000_020.0] == {
            "switch:0.output": "true",
            "switch:0.apower": 40.0,
            "switch:0.aenergy.total": 1000.0,
        }
        assert by_time[1_700_000_030.0] == {"input:0.event": "single_push"}
        assert {r["unit"] for r in readings if r["metric"] == "switch:0.apower"} == {"W"}
        quarantine = rows(gw, "SELECT reason FROM quarantine")
        assert len(quarantine) == 1 and "params" in str(quarantine[0]["reason"])


STATESTREAM = [
    # (topic, payload, (value, text) stored)
    ("homeassistant/sensor/kitchen_temperature/state", b"21.5", (21.5, None)),
    ("homeassistant/binary_sensor/hall_motion/state", b"on", (1.0, "on")),
    ("homeassistant/sensor/kitchen_temperature/state", b"unavailable", (None, "unavailable")),
    ("homeassistant/sensor/kitchen_temperature/unit_of_measurement", b'"\xc2\xb0C"', (None, "°C")),
    ("homeassistant/light/hall/brightness", b"128", (128.0, None)),
    ("homeassistant/light/hall/rgb_color", b"[255, 0, 0]", (None, "[255,0,0]")),
    # Current Home Assistant JSON-encodes states and times too; both encodings read the same.
    ("homeassistant/binary_sensor/hall_motion/state", b'"off"', (0.0, "off")),
    ("homeassistant/sensor/kitchen_temperature/state", b'"21.75"', (21.75, None)),
    ("homeassistant/light/hall/state", b'"on"', (1.0, "on")),
    ("homeassistant/sensor/kitchen_temperature/state", b'"unavailable"', (None, "unavailable")),
    ("homeassistant/sensor/note/state", b'"say \\"hi\\""', (None, 'say "hi"')),
    ("homeassistant/sensor/odd/state", b'"unterminated', (None, '"unterminated')),
    (
        "homeassistant/sensor/kitchen_temperature/last_changed",
        b'"2026-12-03T10:00:00+00:00"',
        (None, "2026-12-03T10:00:00+00:00"),
    ),
]


def test_statestream_states_and_attributes(broker: Mosquitto, tmp_path: Path) -> None:
    with GatewayThread(gateway_config(broker, tmp_path)) as gw:
        pub = publisher(broker.host, broker.port)
        for topic, body, _ in STATESTREAM:
            pub.publish(topic, body, qos=1).wait_for_publish(5)
        # Discovery shares the prefix but is not statestream: quarantined, not misread.
        pub.publish("homeassistant/sensor/x/config", b'{"name": "x"}', qos=1).wait_for_publish(5)
        pub.loop_stop()
        assert wait_until(lambda: gw.gateway.stats.messages >= len(STATESTREAM) + 1)
        got = rows(gw, "SELECT device, metric, value, text, tags FROM readings ORDER BY id")
        assert [(r["device"], r["metric"], r["value"], r["text"]) for r in got] == [
            (*topic.split("/")[2:], *expected) for topic, _, expected in STATESTREAM
        ]
        assert [orjson.loads(str(r["tags"])) for r in got] == [
            {"domain": topic.split("/")[1]} for topic, _, _ in STATESTREAM
        ]
        quarantine = rows(gw, "SELECT topic, reason FROM quarantine")
        assert [q["topic"] for q in quarantine] == ["homeassistant/sensor/x/config"]
        assert "discovery" in str(quarantine[0]["reason"])
