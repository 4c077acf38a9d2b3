"""/metrics parses with prometheus-client's own parser and its figures match what was sent."""

from __future__ import annotations

import json
import re
from pathlib import Path

from apihelpers import Scenario, wait_for_sinks
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def scrape(scenario: Scenario) -> dict[str, list[Sample]]:
    status, headers, body = scenario.get("/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    matches = [
        s.value for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matches) == 1, (name, labels, samples.get(name))
    return matches[0]


def test_ingest_counters_match_what_was_published(scenario: Scenario) -> None:
    sent = scenario.sent
    m = scrape(scenario)
    assert value(m, "edge_gateway_mqtt_messages_total") == sent.messages
    for route, count in sent.by_route.items():
        assert value(m, "edge_gateway_readings_total", route=route) == count
    assert sum(s.value for s in m["edge_gateway_readings_total"]) == sent.readings
    assert value(m, "edge_gateway_quarantined_total") == sent.quarantined
    assert value(m, "edge_gateway_duplicates_dropped_total") == 0
    assert value(m, "edge_gateway_mqtt_connected") == 1
    assert value(m, "edge_gateway_mqtt_reconnects_total") == 0
    assert value(m, "edge_gateway_info", gateway_id="api-test") == 1


def test_rule_firings_and_actions_are_counted_by_rule(scenario: Scenario) -> None:
    raised = scenario.sent.crossings_above(30)
    m = scrape(scenario)
    rule = "room-too-hot"
    assert value(m, "edge_gateway_rule_actions_total", rule=rule, action="alert_raised") == raised
    assert value(m, "edge_gateway_rule_actions_total", rule=rule, action="mqtt") == raised
    assert value(m, "edge_gateway_rule_firings_total", rule=rule) >= raised
    assert value(m, "edge_gateway_rule_action_failures_total", kind="mqtt_publish") == 0
    assert value(m, "edge_gateway_rule_readings_off_time_total", outcome="late_dropped") == 0
    assert value(m, "edge_gateway_rules_loaded") == 1
    assert value(m, "edge_gateway_alerts_active") == len(scenario.sent.hot_now(30))


def test_buffer_rows_and_bytes(scenario: Scenario) -> None:
    m = scrape(scenario)
    assert value(m, "edge_gateway_buffer_rows", table="readings") == scenario.sent.readings
    assert value(m, "edge_gateway_buffer_rows", table="quarantine") == scenario.sent.quarantined
    assert (
        value(m, "edge_gateway_buffer_events_total", counter="readings") == scenario.sent.readings
    )
    assert value(m, "edge_gateway_buffer_bytes") > 0


def test_sink_backlog_retries_and_send_latency(scenario: Scenario) -> None:
    wait_for_sinks(scenario)
    m = scrape(scenario)
    readings = scenario.sent.readings
    live = {"sink": "upstream", "stream": "readings"}
    dead = {"sink": "offline", "stream": "readings"}
    assert value(m, "edge_gateway_sink_backlog_rows", **live) == 0
    assert value(m, "edge_gateway_sink_sent_rows_total", **live) == readings
    assert value(m, "edge_gateway_sink_backlog_rows", **dead) == readings
    assert value(m, "edge_gateway_sink_backlog_age_seconds", **dead) > 0
    assert value(m, "edge_gateway_sink_retries_total", **dead) >= 1
    assert value(m, "edge_gateway_sink_sent_rows_total", **dead) == 0
    # Every confirmed batch of the live sink was timed; the dead sink confirmed none.
    batches = value(m, "edge_gateway_sink_send_seconds_count", **live)
    assert batches >= 1
    assert value(m, "edge_gateway_sink_send_seconds_bucket", le="+Inf", **live) == batches
    assert value(m, "edge_gateway_sink_send_seconds_sum", **live) > 0
    assert not [s for s in m["edge_gateway_sink_send_seconds_count"] if s.labels == dead]


def test_grafana_dashboard_queries_only_metrics_the_gateway_exports(scenario: Scenario) -> None:
    wait_for_sinks(scenario)  # every family has samples by then, the send histogram too
    exported = set(scrape(scenario))
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) == len(dashboard["panels"]) + 1  # one panel draws two queries
    used = {name for expr in exprs for name in re.findall(r"edge_gateway_[a-z_]+", expr)}
    assert used <= exported, used - exported
    assert len(used) >= 12


def test_memory_figures_name_their_owner(scenario: Scenario) -> None:
    m = scrape(scenario)
    assert value(m, "edge_gateway_process_resident_bytes") > 10 * 2**20
    assert value(m, "edge_gateway_arrow_allocated_bytes") >= 0
    cached = sum(s.value for s in m["edge_gateway_buffer_memory_bytes"])
    assert cached > 0  # the buffer's tables are cached by DuckDB once written
