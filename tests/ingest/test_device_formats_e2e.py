"""Tasmota answers, Shelly Gen1 and Gen2, ESPHome, Homie and Home Assistant's status: one
message of each through a real Mosquitto and a gateway with the default routes, subscribed to
everything; the stored readings are what docs/ingest-formats.md says."""

from __future__ import annotations

from pathlib import Path

from gateway.config import ApiConfig, BufferConfig, GatewayConfig, MqttConfig, Subscription
from gateway.services.mosquitto import Mosquitto
from gateway.testing import GatewayThread, publisher, wait_until

# Retained before the gateway subscribes, as a Homie device leaves its description.
RETAINED = [
    ("homie/boiler/$homie", "4.0.0"),
    ("homie/boiler/$name", "Boiler"),
    ("homie/boiler/heating/temperature/$datatype", "float"),
    ("homie/boiler/heating/temperature/$unit", "°C"),
]
SENT = [
    ("stat/plug/RESULT", '{"POWER":"ON"}'),
    ("stat/plug/STATUS10", '{"StatusSNS":{"Time":"2024-03-01T12:00:00","AM2301":'
     '{"Temperature":21.1},"TempUnit":"C"}}'),
    ("stat/plug/POWER", "OFF"),
    ("tele/plug/LWT", "Online"),
    ("cmnd/plug/POWER", "TOGGLE"),
    ("shellies/shellyplug-s-A1/relay/0", "on"),
    ("shellies/shellyplug-s-A1/relay/0/power", "42.5"),
    ("shellies/shellyplug-s-A1/relay/0/energy", "1200"),
    ("shellies/shellyplug-s-A1/relay/0/command", "off"),
    ("shellies/shellyplug-s-A1/online", "true"),
    ("shellies/announce", '{"id":"shellyplug-s-A1","model":"SHPLG-S"}'),
    ("shellyplus1pm-B2/online", "false"),
    ("livingroom/sensor/temperature/state", "21.5"),
    ("livingroom/binary_sensor/motion/state", "ON"),
    ("livingroom/switch/relay/command", "ON"),
    ("livingroom/status", "online"),
    ("homie/boiler/$state", "ready"),
    ("homie/boiler/heating/temperature", "61.5"),
    ("homie/boiler/heating/temperature/set", "60"),
    ("homeassistant/status", "online"),
]  # fmt: skip
STORED = [
    # (device, metric, value, text, unit)
    ("plug", "POWER", None, "ON", None),
    ("plug", "AM2301.Temperature", 21.1, None, "°C"),
    ("plug", "POWER", None, "OFF", None),
    ("plug", "availability", 1.0, "online", None),
    ("shellyplug-s-A1", "relay.0", 1.0, "on", None),
    ("shellyplug-s-A1", "relay.0.power", 42.5, None, "W"),
    ("shellyplug-s-A1", "relay.0.energy", 20.0, None, "Wh"),
    ("shellyplug-s-A1", "availability", 1.0, "online", None),
    ("shellyplus1pm-B2", "availability", 0.0, "offline", None),
    ("livingroom", "temperature", 21.5, None, None),
    ("livingroom", "motion", 1.0, "ON", None),
    ("livingroom", "availability", 1.0, "online", None),
    ("boiler", "availability", 1.0, "online", None),
    ("boiler", "heating.temperature", 61.5, None, "°C"),
    ("homeassistant", "availability", 1.0, "online", None),
]


def test_one_message_of_each_format_is_stored_as_documented(
    broker: Mosquitto, tmp_path: Path
) -> None:
    pub = publisher(broker.host, broker.port)
    for topic, body in RETAINED:
        pub.publish(topic, body.encode(), qos=1, retain=True).wait_for_publish(5)
    config = GatewayConfig(
        mqtt=MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id="gw-device-formats",
            subscriptions=[Subscription(topic="#", qos=1)],
        ),
        buffer=BufferConfig(path=tmp_path / "buffer.duckdb"),
        api=ApiConfig(enabled=False),
    )
    with GatewayThread(config) as gw:
        assert wait_until(lambda: gw.gateway.stats.messages >= len(RETAINED))
        for topic, body in SENT:
            pub.publish(topic, body.encode(), qos=1).wait_for_publish(5)
        pub.loop_stop()
        assert wait_until(lambda: gw.gateway.stats.messages >= len(RETAINED) + len(SENT))
        assert gw.gateway.store is not None
        stored = [
            (r["device"], r["metric"], r["value"], r["text"], r["unit"])
            for r in gw.gateway.store.query(
                "SELECT device, metric, value, text, unit FROM readings ORDER BY id"
            ).to_pylist()
        ]
        assert stored == STORED
        assert gw.gateway.store.query("SELECT topic, reason FROM quarantine").to_pylist() == []
