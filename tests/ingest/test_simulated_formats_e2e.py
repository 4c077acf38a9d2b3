"""Every payload format the simulator speaks is read by the gateway, through a real Mosquitto."""

from __future__ import annotations

from pathlib import Path

import orjson

from gateway.config import ApiConfig, BufferConfig, GatewayConfig, MqttConfig, Subscription
from gateway.services.mosquitto import Mosquitto
from gateway.testing import GatewayThread, wait_until
from simulators.runner import ScenarioRunner
from simulators.scenario import load_scenario

SUBSCRIPTIONS = [
    "sensors/#",
    "zigbee2mqtt/+",
    "tele/+/SENSOR",
    "tele/+/STATE",
    "+/events/rpc",
    "homeassistant/#",
    "spBv1.0/#",
]


def gateway_config(broker: Mosquitto, tmp_path: Path) -> GatewayConfig:
    """The default routes, subscribed to every format."""
    return GatewayConfig(
        mqtt=MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id="gw-formats",
            subscriptions=[Subscription(topic=t, qos=1) for t in SUBSCRIPTIONS],
        ),
        buffer=BufferConfig(path=tmp_path / "buffer.duckdb"),
        api=ApiConfig(enabled=False),
    )


def rows(gw: GatewayThread, sql: str) -> list[dict[str, object]]:
    assert gw.gateway.store is not None
    return gw.gateway.store.query(sql).to_pylist()  # type: ignore[no-any-return]


def test_formats_tour_is_decoded_with_nothing_quarantined(
    broker: Mosquitto, tmp_path: Path
) -> None:
    scenario = load_scenario("formats-tour")
    with GatewayThread(gateway_config(broker, tmp_path)) as gw:
        report = ScenarioRunner(scenario, broker.host, broker.port, realtime=False).run()
        assert report.published > 500
        assert wait_until(lambda: gw.gateway.stats.messages >= report.published, 30)
        quarantined = rows(gw, "SELECT topic, reason FROM quarantine")
        assert quarantined == []
        devices: dict[str, list[str]] = {
            str(r["device"]): list(r["metrics"])  # type: ignore[call-overload]
            for r in rows(
                gw,
                "SELECT device, list(DISTINCT metric ORDER BY metric) AS metrics "
                "FROM readings GROUP BY device",
            )
        }
        # Every device reports under its own name, except statestream, which names entities
        # `<device>_<metric>`; the Sparkplug edge node reports too (birth, death, seq gaps).
        named = {n for g in scenario.fleet if g.format != "statestream" for n, _ in g.names()}
        assert named <= set(devices)
        assert {"kitchen_smoke_smoke", "bedroom_co2_co2", "house_meter_power"} <= set(devices)
        assert devices["utility-edge"] == ["availability"]
        # Gateway layout, Zigbee2MQTT and Tasmota: metrics as the device reports them.
        assert {"temperature", "humidity", "battery"} <= set(devices["kitchen-climate"])
        assert {"temperature", "humidity", "battery", "linkquality"} <= set(
            devices["bedroom-climate"]
        )
        assert {"ENERGY.Power", "ENERGY.Total", "POWER", "UptimeSec"} <= set(devices["living-tv"])
        # Shelly: components merged; each partial update still yields the whole switch.
        assert {"switch:0.apower", "switch:0.output", "switch:0.aenergy.total"} <= set(
            devices["shellyplug-washer"]
        )
        # Statestream: one entity per metric, state plus attributes.
        assert {"state", "unit_of_measurement", "friendly_name"} <= set(
            devices["house_meter_power"]
        )
        # Sparkplug B: aliases in DDATA resolved to the names born in DBIRTH.
        assert {"temperature", "door", "availability"} <= set(devices["garage-freezer"])
        tags = rows(gw, "SELECT DISTINCT tags FROM readings WHERE device = 'garage-freezer'")
        # The tour runs faster than real time: device times run ahead of their arrival, and
        # the route's skew policy marks those that are further off than it trusts.
        found = [orjson.loads(str(t["tags"])) for t in tags]
        assert {t.pop("clock_skew", "adjusted") for t in found} == {"adjusted"}
        assert found[0] == {"group": "home", "node": "utility-edge"}
        assert all(t == found[0] for t in found)
        # Shelly partial updates keep unchanged fields: output is known in every switch update.
        counts = rows(
            gw,
            "SELECT metric, count(*) AS n FROM readings WHERE device = 'shellyplug-washer' "
            "AND metric IN ('switch:0.apower', 'switch:0.output') GROUP BY metric ORDER BY metric",
        )
        assert counts[0]["n"] == counts[1]["n"] and int(str(counts[0]["n"])) >= 50
