"""`edge-gateway rules check` and `rules test` as a user runs them."""

from __future__ import annotations

import json
import time
from pathlib import Path

from typer.testing import CliRunner

from gateway.buffer.store import BufferStore
from gateway.cli import app
from gateway.model import DECODED_QUARANTINE_SCHEMA, IngestBatch
from gateway.rules.actions import iso_time
from gateway.rules.testing import R, readings

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"

RULE = """
rules:
  - id: freezer-warm
    select: {device: freezer, metric: temperature}
    trigger: {type: threshold, above: -15, for: 5m}
    actions:
      - alert: {severity: critical, message: "freezer at {value}"}
      - mqtt: {topic: "commands/home/{device}/alarm", payload: "ON"}
"""


def test_check_accepts_the_shipped_rule_files() -> None:
    result = CliRunner().invoke(
        app,
        ["rules", "check", str(RULES_DIR / "smart-home.yaml"), str(RULES_DIR / "thresholds.yaml")],
    )
    assert result.exit_code == 0, result.output
    assert "12 rules ok" in result.output


def test_check_reports_file_rule_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(RULE.replace("for: 5m", "for: 5 minutes"))
    result = CliRunner().invoke(app, ["rules", "check", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}: invalid rules" in result.output
    assert (
        "rule 'freezer-warm': trigger.threshold.for: '5 minutes' is not a duration" in result.output
    )


def test_backtest_prints_what_would_have_fired_when(tmp_path: Path) -> None:
    rule_file = tmp_path / "freezer.yaml"
    rule_file.write_text(RULE)
    buffer = tmp_path / "buffer.duckdb"
    start = float(int(time.time()) - 3600)  # an hour ago, on a whole second
    history = readings(
        [
            R(start, "freezer", "temperature", -18),
            R(start + 60, "freezer", "temperature", -12),  # warm from here ...
            R(start + 120, "freezer", "temperature", -11),
            R(start + 400, "freezer", "temperature", -19),  # ... for 340 s: fires at +360
            R(start + 1000, "freezer", "temperature", -10),  # warm again until now: fires at +1300
        ]
    ).drop_columns(["id", "event_id"])
    store = BufferStore(buffer)
    store.append(IngestBatch(history, DECODED_QUARANTINE_SCHEMA.empty_table()), [])
    store.close()

    args = ["rules", "test", str(rule_file), "--since", "2h", "--buffer", str(buffer)]
    result = CliRunner().invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["rule"], r["action"], r["detail"]) for r in rows] == [
        ("freezer-warm", "alert raised", "[critical] freezer at -12"),
        ("freezer-warm", "mqtt", "commands/home/freezer/alarm <- ON qos 1"),
        ("freezer-warm", "alert cleared", "[critical] freezer at -12"),
        ("freezer-warm", "alert raised", "[critical] freezer at -10"),
        ("freezer-warm", "mqtt", "commands/home/freezer/alarm <- ON qos 1"),
    ]
    assert [r["time"] for r in rows] == [
        iso_time(start + 360),
        iso_time(start + 360),
        iso_time(start + 400),
        iso_time(start + 1300),
        iso_time(start + 1300),
    ]
    table = CliRunner().invoke(app, args)
    assert table.exit_code == 0
    assert "nothing was sent" in table.output


CROSSING_RULE = """
rules:
  - id: freezer-warm
    select: {device: freezer, metric: temperature}
    trigger: {type: threshold, above: -15}
    actions:
      - mqtt: {topic: "commands/home/{device}/alarm", payload: "ON"}
"""


def test_backtest_takes_retained_readings_as_known_state_as_the_live_rules_do(
    tmp_path: Path,
) -> None:
    """A retained message is the broker's memory of a device, delivered on subscribing: live, it
    primes the rules and fires nothing. Its reading is marked in the buffer, so a backtest
    agrees with what the gateway did."""
    rule_file = tmp_path / "freezer.yaml"
    rule_file.write_text(CROSSING_RULE)
    buffer = tmp_path / "buffer.duckdb"
    start = float(int(time.time()) - 3600)
    history = readings(
        [
            R(start, "freezer", "temperature", -12),  # retained: already warm, no crossing
            R(start + 60, "freezer", "temperature", -11),
            R(start + 120, "freezer", "temperature", -19),
            R(start + 180, "freezer", "temperature", -10),  # a crossing
        ]
    ).drop_columns(["id", "event_id"])
    store = BufferStore(buffer)
    store.append(IngestBatch(history, DECODED_QUARANTINE_SCHEMA.empty_table(), retained=[0]), [])
    store.close()

    args = ["rules", "test", str(rule_file), "--since", "2h", "--buffer", str(buffer)]
    result = CliRunner().invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert [r["time"] for r in json.loads(result.output)] == [iso_time(start + 180)]
