"""What the API says through a broker outage, and what the dashboard shows after a restart."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway.config import ApiConfig, BufferConfig, GatewayConfig, MqttConfig, ReconnectConfig
from gateway.services.mosquitto import Mosquitto
from gateway.testing import GatewayThread, publisher, wait_until


def config(tmp_path: Path, broker: Mosquitto) -> GatewayConfig:
    return GatewayConfig(
        mqtt=MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id="outage-test",
            reconnect=ReconnectConfig(min_delay=0.1, max_delay=0.5),
        ),
        buffer=BufferConfig(path=tmp_path / "buffer.duckdb"),
        api=ApiConfig(port=0),
    )


def get(gw: GatewayThread, path: str) -> tuple[int, bytes]:
    assert gw.gateway.api_address is not None
    host, port = gw.gateway.api_address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def metric(gw: GatewayThread, name: str) -> float:
    _, body = get(gw, "/metrics")
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not in /metrics")


def ready(gw: GatewayThread) -> tuple[int, Any]:
    status, body = get(gw, "/readyz")
    return status, json.loads(body)


def test_readyz_and_metrics_follow_the_broker_down_and_back(
    tmp_path: Path, broker: Mosquitto
) -> None:
    with GatewayThread(config(tmp_path, broker)) as gw:
        assert ready(gw)[0] == 200
        assert metric(gw, "edge_gateway_mqtt_connected") == 1
        broker.stop()
        assert wait_until(lambda: ready(gw)[0] == 503, 10)
        assert ready(gw)[1] == {
            "ready": False,
            "broker_connected": False,
            "buffer_writable": True,
        }
        assert metric(gw, "edge_gateway_mqtt_connected") == 0
        status = json.loads(get(gw, "/api/status")[1])
        assert status["broker"]["connected"] is False
        assert status["broker"]["last_error"]
        assert get(gw, "/healthz")[0] == 200  # alive all the same: no restart needed
        broker.start()
        assert wait_until(lambda: ready(gw)[0] == 200, 15)
        assert metric(gw, "edge_gateway_mqtt_reconnects_total") == 1


def test_devices_show_their_latest_values_again_after_a_restart(
    tmp_path: Path, broker: Mosquitto
) -> None:
    cfg = config(tmp_path, broker)
    with GatewayThread(cfg) as gw:
        client = publisher(broker.host, broker.port)
        for value in ("20.5", "21.0", "21.5"):
            client.publish("sensors/home/cellar/temperature", value, qos=1).wait_for_publish(10)
        client.publish("sensors/home/cellar/pump", "on", qos=1).wait_for_publish(10)
        client.disconnect()
        client.loop_stop()
        assert wait_until(lambda: gw.gateway.stats.readings == 4, 10)
    with GatewayThread(cfg) as gw:  # nothing new arrives: the values come from the buffer
        devices = json.loads(get(gw, "/api/devices")[1])["devices"]
    by_metric = {d["metric"]: d for d in devices}
    assert by_metric["temperature"]["value"] == 21.5
    assert by_metric["temperature"]["readings"] == 3
    assert by_metric["temperature"]["spark"] == [21.5]
    assert (by_metric["pump"]["text"], by_metric["pump"]["value"]) == ("on", None)
    assert {d["device"] for d in devices} == {"cellar"}
