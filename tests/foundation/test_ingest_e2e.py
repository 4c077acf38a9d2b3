"""Ingest end to end through a real Mosquitto: routing, quarantine, sessions, SQL, crashes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from gateway.buffer.connection import connect
from gateway.config import (
    ApiConfig,
    BufferConfig,
    GatewayConfig,
    MqttConfig,
    RouteConfig,
    Subscription,
)
from gateway.services.mosquitto import Mosquitto
from gateway.sqlclient import query, running_api
from gateway.testing import GatewayProcess, GatewayThread, publisher, wait_until


def config_for(broker: Mosquitto, tmp_path: Path, client_id: str = "gw-test") -> GatewayConfig:
    return GatewayConfig(
        mqtt=MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id=client_id,
            subscriptions=[
                Subscription(topic="sensors/#", qos=1),
                Subscription(topic="zigbee2mqtt/+", qos=1),
                Subscription(topic="tele/+/SENSOR", qos=1),
                Subscription(topic="unknown/#", qos=1),
            ],
        ),
        routes=[
            RouteConfig(pattern="sensors/{site}/{device}/{metric}"),
            RouteConfig(pattern="zigbee2mqtt/{device}", decoder="zigbee2mqtt"),
            RouteConfig(pattern="tele/{device}/SENSOR", decoder="tasmota"),
        ],
        buffer=BufferConfig(path=tmp_path / "buffer.duckdb", max_payload_bytes=10_000),
        api=ApiConfig(port=0),
    )


def rows(gw: GatewayThread, sql: str) -> list[dict[str, object]]:
    assert gw.gateway.store is not None
    return gw.gateway.store.query(sql).to_pylist()  # type: ignore[no-any-return]


def test_wildcard_routes_decoders_and_quarantine(broker: Mosquitto, tmp_path: Path) -> None:
    with GatewayThread(config_for(broker, tmp_path)) as gw:
        pub = publisher(broker.host, broker.port)
        sent = [
            ("sensors/home/kitchen/temperature", b"21.5"),
            ("sensors/home/door/contact", b"open"),
            ("zigbee2mqtt/lamp", b'{"brightness": 120, "linkquality": 90}'),
            ("tele/plug-1/SENSOR", b'{"Time":"2024-01-01T00:00:00","ENERGY":{"Power":5}}'),
            ("sensors/home/kitchen/temperature", b'{"value": oops}'),  # malformed JSON
            ("unknown/thing", b"1"),  # no route
            ("sensors/home/kitchen/blob", b"{" + b" " * 20_000 + b"}"),  # oversized
        ]
        for topic, payload in sent:
            pub.publish(topic, payload, qos=1).wait_for_publish(5)
        assert wait_until(lambda: gw.gateway.stats.messages >= len(sent))
        readings = rows(gw, "SELECT device, metric, value, text FROM readings ORDER BY id")
        assert readings == [
            {"device": "kitchen", "metric": "temperature", "value": 21.5, "text": None},
            {"device": "door", "metric": "contact", "value": None, "text": "open"},
            {"device": "lamp", "metric": "brightness", "value": 120.0, "text": None},
            {"device": "lamp", "metric": "linkquality", "value": 90.0, "text": None},
            {"device": "plug-1", "metric": "ENERGY.Power", "value": 5.0, "text": None},
        ]
        quarantined = rows(gw, "SELECT topic, reason, payload_bytes FROM quarantine ORDER BY id")
        assert [q["topic"] for q in quarantined] == [
            "sensors/home/kitchen/temperature",
            "unknown/thing",
            "sensors/home/kitchen/blob",
        ]
        assert "malformed JSON" in str(quarantined[0]["reason"])
        assert quarantined[1]["reason"] == "no route matches this topic"
        assert "exceeds max_payload_bytes" in str(quarantined[2]["reason"])
        pub.loop_stop()


def test_sql_answers_while_running_and_after_stop(broker: Mosquitto, tmp_path: Path) -> None:
    config = config_for(broker, tmp_path)
    path = config.buffer.path
    with GatewayThread(config) as gw:
        pub = publisher(broker.host, broker.port)
        for i in range(50):
            pub.publish(f"sensors/s/dev{i % 5}/t", str(i), qos=1)
        assert wait_until(lambda: gw.gateway.stats.readings >= 50)
        # The file is locked by the running gateway; the CLI goes through its API.
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "sql",
                "--buffer",
                str(path),
                "--format",
                "json",
                "SELECT count(*) AS n, count(DISTINCT device) AS devices FROM readings",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout) == [{"n": 50, "devices": 5}]
        refused = subprocess.run(
            [sys.executable, "-m", "gateway", "sql", "--buffer", str(path), "DELETE FROM readings"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 1
        assert "read-only" in refused.stderr
        pub.loop_stop()
    # Stopped: the CLI opens the file read-only itself.
    assert query(path, "SELECT count(*) AS n FROM readings")["n"][0].as_py() == 50
    csv_out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "sql",
            "--buffer",
            str(path),
            "--format",
            "csv",
            "SELECT device, count(*) AS n FROM readings GROUP BY device ORDER BY device",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert csv_out.stdout.splitlines()[:2] == ["device,n", "dev0,10"]


def test_persistent_session_delivers_what_was_published_while_stopped(
    broker: Mosquitto, tmp_path: Path
) -> None:
    config = config_for(broker, tmp_path, client_id="gw-persistent")
    with GatewayThread(config) as gw:
        pass  # first run creates the persistent session and its subscriptions
    assert gw.gateway.stats.readings == 0
    pub = publisher(broker.host, broker.port)
    for i in range(200):
        pub.publish("sensors/s/d/m", str(i), qos=1).wait_for_publish(5)
    pub.loop_stop()
    with GatewayThread(config) as gw:
        assert wait_until(lambda: gw.gateway.stats.readings >= 200)
        values = rows(gw, "SELECT value FROM readings ORDER BY id")
        assert [v["value"] for v in values] == [float(i) for i in range(200)]


def write_config(broker: Mosquitto, tmp_path: Path, client_id: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "mqtt": {
                    "host": broker.host,
                    "port": broker.port,
                    "client_id": client_id,
                    "subscriptions": [{"topic": "sensors/#", "qos": 1}],
                },
                "buffer": {"path": str(tmp_path / "buffer.duckdb")},
                "api": {"port": 0},
                "log_level": "warning",
            }
        )
    )
    return path


def committed(buffer: Path) -> int:
    try:
        return int(query(buffer, "SELECT count(*) AS n FROM readings")["n"][0].as_py())
    except Exception:
        return -1


def test_kill_9_mid_stream_loses_nothing_and_doubles_nothing(
    broker: Mosquitto, tmp_path: Path, start_gateway: Callable[[Path], GatewayProcess]
) -> None:
    total = 20_000
    config = write_config(broker, tmp_path, "gw-kill9")
    buffer = tmp_path / "buffer.duckdb"
    first = start_gateway(config)
    assert wait_until(lambda: committed(buffer) == 0, timeout=30)
    pub = publisher(broker.host, broker.port)
    sent = [pub.publish(f"sensors/s/dev{i % 50}/seq", str(i), qos=1) for i in range(total)]
    # Kill it hard in the middle of the stream.
    assert wait_until(lambda: committed(buffer) >= 3_000, timeout=60)
    first.kill()
    # The publisher drains into the broker's session for the gateway; stopping its network
    # loop before the broker acknowledged everything would drop the rest on the publisher side.
    assert wait_until(lambda: all(m.is_published() for m in sent), timeout=60)
    pub.loop_stop()
    second = start_gateway(config)
    assert wait_until(lambda: committed(buffer) >= total, timeout=120), committed(buffer)
    time.sleep(1.0)  # let any stray redelivery arrive before counting
    assert second.terminate(30) == 0
    con = connect(buffer, read_only=True)
    try:
        n, distinct = con.execute(
            "SELECT count(*), count(DISTINCT value) FROM readings"
        ).fetchone() or (0, 0)
    finally:
        con.close()
    assert (n, distinct) == (total, total)


def test_sigterm_finishes_the_open_batch_and_exits_zero(
    broker: Mosquitto, tmp_path: Path, start_gateway: Callable[[Path], GatewayProcess]
) -> None:
    config = write_config(broker, tmp_path, "gw-term")
    buffer = tmp_path / "buffer.duckdb"
    process = start_gateway(config)
    assert wait_until(lambda: running_api(buffer) is not None, timeout=30)
    pub = publisher(broker.host, broker.port)
    for i in range(2_000):
        pub.publish("sensors/s/d/m", str(i), qos=1)
    pub.loop_stop()
    assert wait_until(lambda: committed(buffer) >= 1, timeout=30)
    assert process.terminate(30) == 0
    # Whatever was not committed before the stop comes on the next start, once.
    restarted = start_gateway(config)
    assert wait_until(lambda: running_api(buffer) is not None, timeout=30)
    assert wait_until(lambda: committed(buffer) >= 2_000, timeout=60)
    assert restarted.terminate(30) == 0
    con = connect(buffer, read_only=True)
    try:
        assert con.execute("SELECT count(*), count(DISTINCT value) FROM readings").fetchone() == (
            2_000,
            2_000,
        )
    finally:
        con.close()


def test_mqtt5_persistent_session_and_no_retained_replay(broker: Mosquitto, tmp_path: Path) -> None:
    config = config_for(broker, tmp_path, client_id="gw-v5")
    config = config.model_copy(update={"mqtt": config.mqtt.model_copy(update={"protocol": "5"})})
    pub = publisher(broker.host, broker.port)
    pub.publish("sensors/s/lamp/state", b"ON", qos=1, retain=True).wait_for_publish(5)
    with GatewayThread(config) as gw:
        assert wait_until(lambda: gw.gateway.stats.readings >= 1)
    for i in range(20):
        pub.publish("sensors/s/d/m", str(i), qos=1).wait_for_publish(5)
    pub.loop_stop()
    with GatewayThread(config) as gw:
        assert wait_until(lambda: gw.gateway.stats.readings >= 20)
        time.sleep(0.5)  # a retained replay would arrive right after the subscribe
        got = rows(gw, "SELECT device, count(*) AS n FROM readings GROUP BY device ORDER BY 1")
    # The retained lamp state was stored once, on the first subscription only.
    assert got == [{"device": "d", "n": 20}, {"device": "lamp", "n": 1}]


def test_broker_restart_reconnects_and_keeps_the_session(broker: Mosquitto, tmp_path: Path) -> None:
    config = config_for(broker, tmp_path, client_id="gw-restart")
    with GatewayThread(config) as gw:
        ingest = gw.gateway.ingest
        assert ingest is not None
        broker.restart()
        assert wait_until(lambda: ingest.connects >= 2, timeout=30)
        pub = publisher(broker.host, broker.port)
        for i in range(100):
            pub.publish("sensors/s/d/m", str(i), qos=1)
        assert wait_until(lambda: gw.gateway.stats.readings >= 100)
        pub.loop_stop()
