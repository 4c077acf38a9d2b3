"""Every endpoint of the local API, read from a running gateway fed through a real Mosquitto."""

from __future__ import annotations

import json
import urllib.request

import pyarrow as pa
from apihelpers import Scenario, sink_entry, wait_for_sinks

from gateway.testing import wait_until


def test_healthz_answers_while_the_process_lives(scenario: Scenario) -> None:
    status, _, body = scenario.get("/healthz")
    health = json.loads(body)
    assert (status, health["status"], health["healthy"]) == (200, "ok", True)
    assert set(health["parts"]) == {"event_loop", "writer"}  # tests/faults/test_liveness.py


def test_readyz_reports_broker_connected_and_buffer_writable(scenario: Scenario) -> None:
    status, _, body = scenario.get("/readyz")
    assert status == 200
    assert json.loads(body) == {"ready": True, "broker_connected": True, "buffer_writable": True}


def test_status_counts_what_was_published(scenario: Scenario) -> None:
    sent = scenario.sent
    data = scenario.json("/api/status")
    assert data["gateway_id"] == "api-test"
    assert data["broker"]["connected"] is True
    assert data["ingest"]["messages"] == sent.messages
    assert data["ingest"]["readings"] == sent.readings
    assert data["ingest"]["quarantined"] == sent.quarantined
    assert data["buffer"]["counters"]["readings_total"] == sent.readings
    assert data["rules"] == {
        "enabled": True,
        "loaded": 1,
        "active_alerts": len(sent.hot_now(30)),
        "fired": data["rules"]["fired"],
        "last_reload_error": None,
    }
    assert {(s["sink"], s["stream"]) for s in data["sinks"]} == {
        ("upstream", "readings"),
        ("upstream", "alerts"),
        ("offline", "readings"),
        ("offline", "alerts"),
    }


def test_devices_show_latest_values_and_a_sparkline(scenario: Scenario) -> None:
    devices = scenario.json("/api/devices")["devices"]
    by_key = {(d["device"], d["metric"]): d for d in devices}
    assert set(by_key) == {
        ("room-0", "temperature"),
        ("room-1", "temperature"),
        ("room-2", "temperature"),
        ("plug-1", "power"),
        ("plug-1", "voltage"),
    }
    for key, value in scenario.sent.latest.items():
        assert by_key[key]["value"] == value
        assert by_key[key]["spark"][-1] == value
    assert by_key[("room-0", "temperature")]["readings"] == 10
    assert by_key[("plug-1", "voltage")]["value"] == 230.0


def test_rules_list_the_rule_with_its_firings(scenario: Scenario) -> None:
    data = scenario.json("/api/rules")
    assert data["enabled"] is True
    [rule] = data["rules"]
    assert rule["id"] == "room-too-hot"
    assert rule["trigger"] == "threshold"
    raised = scenario.sent.crossings_above(30)
    assert rule["actions"]["alert_raised"] == raised
    assert rule["actions"]["mqtt"] == raised
    assert rule["firings"] >= raised
    assert data["recent_firings"][0]["rule_id"] == "room-too-hot"
    assert {f["device"] for f in data["recent_firings"]} == {"room-1", "room-2"}


def test_alerts_show_the_active_ones_and_recent_changes(scenario: Scenario) -> None:
    hot = scenario.sent.hot_now(30)
    assert wait_until(lambda: len(scenario.json("/api/alerts")["active"]) == len(hot), 10)
    data = scenario.json("/api/alerts")
    assert {a["device"] for a in data["active"]} == hot
    assert all(
        a["severity"] == "critical" and a["rule_id"] == "room-too-hot" for a in data["active"]
    )
    raised = [a for a in data["recent"] if a["state"] == "raised"]
    assert len(raised) == scenario.sent.crossings_above(30)


def test_sinks_show_backlog_and_last_error_per_sink(scenario: Scenario) -> None:
    wait_for_sinks(scenario)
    sinks = scenario.json("/api/sinks")["sinks"]
    live = sink_entry(sinks, "upstream", "readings")
    assert live["sent_rows"] == scenario.sent.readings
    assert live["backlog_rows"] == 0 and live["last_error"] is None
    dead = sink_entry(sinks, "offline", "readings")
    assert dead["backlog_rows"] == scenario.sent.readings
    assert dead["oldest_unsent_age_s"] > 0
    assert dead["failures"] >= 1
    assert dead["last_error"]


def test_quarantine_shows_each_message_with_its_reason(scenario: Scenario) -> None:
    data = scenario.json("/api/quarantine")
    by_topic = {q["topic"]: q for q in data["recent"]}
    assert set(by_topic) == {"zigbee2mqtt/plug-2", "sensors/too/many/levels/here"}
    assert by_topic["zigbee2mqtt/plug-2"]["payload"] == "{not json"
    assert by_topic["zigbee2mqtt/plug-2"]["reason"].startswith("zigbee2mqtt decoder")
    assert by_topic["sensors/too/many/levels/here"]["reason"] == "no route matches this topic"
    assert sum(r["messages"] for r in data["reasons"]) == scenario.sent.quarantined


def post_sql(scenario: Scenario, sql: str, accept: str = "application/json") -> tuple[int, bytes]:
    request = urllib.request.Request(
        scenario.base + "/api/sql",
        data=json.dumps({"sql": sql}).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Accept": accept},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def test_sql_answers_as_json_rows_and_as_arrow(scenario: Scenario) -> None:
    sql = "SELECT device, count(*) AS n FROM readings GROUP BY device ORDER BY device"
    status, body = post_sql(scenario, sql)
    assert status == 200
    answer = json.loads(body)
    assert answer["columns"] == ["device", "n"]
    assert answer["rows"] == [["plug-1", 20], ["room-0", 10], ["room-1", 10], ["room-2", 10]]
    status, body = post_sql(scenario, sql, accept="application/vnd.apache.arrow.stream")
    assert status == 200
    table = pa.ipc.open_stream(body).read_all()
    assert table.column("n").to_pylist() == [20, 10, 10, 10]


def test_sql_refuses_writes(scenario: Scenario) -> None:
    status, body = post_sql(scenario, "DELETE FROM readings")
    assert status == 403
    assert "error" in json.loads(body)


def test_event_stream_sends_dashboard_snapshots(scenario: Scenario) -> None:
    with urllib.request.urlopen(scenario.base + "/api/events", timeout=10) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        lines = [response.readline() for _ in range(5)]
    assert lines[0] == b"retry: 2000\n"
    assert lines[2] == b"event: snapshot\n"
    snapshot = json.loads(lines[3].removeprefix(b"data: "))
    assert snapshot["status"]["ingest"]["readings"] == scenario.sent.readings
    assert {d["device"] for d in snapshot["devices"]} >= {"room-0", "plug-1"}
    assert len(snapshot["throughput"]) == 120
    assert set(snapshot) >= {"alerts", "firings", "sinks", "quarantine", "rules"}


def test_dashboard_page_and_assets_are_served_from_the_package(scenario: Scenario) -> None:
    status, headers, body = scenario.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'src="/static/app.js"' in body
    assert b"http://" not in body and b"https://" not in body  # no CDN: works offline
    for asset, kind in (("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")):
        status, headers, body = scenario.get(asset)
        assert status == 200 and headers["Content-Type"].startswith(kind)
        assert b"https://" not in body


def test_unknown_paths_are_404(scenario: Scenario) -> None:
    assert scenario.get("/api/nope")[0] == 404
    assert scenario.get("/static/../server.py")[0] == 404
