"""Conditions, cooldown, event-time semantics and restart of the pure engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from rulehelpers import engine, fired_at, run, series, threshold

from gateway.errors import RuleError
from gateway.rules.actions import AlertChange, Command, LogLine, WebhookCall
from gateway.rules.engine import RuleEngine
from gateway.rules.schema import load_rule_files, parse_rule_file
from gateway.rules.testing import R, readings

LONDON = {"latitude": 51.5074, "longitude": -0.1278, "timezone": "Europe/London"}
DEC21_NOON = 1734782400.0  # 2024-12-21 12:00 UTC; London sunset 15:53:35 UTC, sunrise 08:04


def test_sunset_condition_on_a_fixed_date_and_place() -> None:
    e = engine(
        """
rules:
  - id: dusk
    select: {device: hallway-motion}
    trigger: {type: state, to: true}
    conditions: [{sun: {after: sunset}}]
    actions: [{mqtt: {topic: light, payload: "ON"}}]
""",
        **LONDON,
    )
    before_sunset = DEC21_NOON + 3 * 3600 + 52 * 60  # 15:52 UTC
    after_sunset = DEC21_NOON + 3 * 3600 + 55 * 60  # 15:55 UTC
    rows = [
        R(before_sunset, "hallway-motion", "occupancy", 1.0, "true"),
        R(before_sunset + 60, "hallway-motion", "occupancy", 0.0, "false"),
        R(after_sunset, "hallway-motion", "occupancy", 1.0, "true"),
    ]
    assert fired_at(run(e, rows)) == [after_sunset]


def test_night_is_after_sunset_or_before_sunrise() -> None:
    e = engine(
        """
rules:
  - id: night
    select: {device: d}
    trigger: {type: threshold, above: 0}
    conditions: [{sun: {after: sunset, before: sunrise}}]
    actions: [{mqtt: {topic: t, payload: "x"}}]
""",
        **LONDON,
    )
    times = [DEC21_NOON - 5 * 3600, DEC21_NOON, DEC21_NOON + 8 * 3600]  # 07:00, 12:00, 20:00
    rows = []
    for t in times:
        rows += [R(t, "d", "m", 1.0), R(t + 1, "d", "m", -1.0)]
    assert fired_at(run(e, rows)) == [times[0], times[2]]


def test_motion_light_needs_darkness_or_low_lux() -> None:
    e = engine(
        """
rules:
  - id: hallway-light
    select: {device: hallway-motion, metric: occupancy}
    trigger: {type: state, to: true}
    conditions:
      - any:
          - sun: {after: sunset, before: sunrise}
          - state: {device: hallway-lux, metric: illuminance, below: 50}
    actions: [{mqtt: {topic: commands/home/hallway-light/set, payload: "ON"}}]
""",
        **LONDON,
    )
    t = DEC21_NOON  # daylight
    rows = [
        R(t, "hallway-lux", "illuminance", 300),
        R(t + 1, "hallway-motion", "occupancy", 1.0, "true"),
        R(t + 2, "hallway-motion", "occupancy", 0.0, "false"),
        R(t + 3, "hallway-lux", "illuminance", 20),
        R(t + 4, "hallway-motion", "occupancy", 1.0, "true"),
    ]
    assert fired_at(run(e, rows)) == [t + 4]


def test_time_window_spans_midnight_and_weekdays() -> None:
    e = engine(
        """
rules:
  - id: late
    select: {device: d}
    trigger: {type: threshold, above: 0}
    conditions: [{time: {after: "22:00", before: "06:00", weekdays: [fri]}}]
    actions: [{mqtt: {topic: t, payload: "x"}}]
"""
    )
    fri_2300 = 1719010800.0  # 2024-06-21 (Friday) 23:00 UTC
    sat_0300 = fri_2300 + 4 * 3600  # Friday night's window, though the date is Saturday
    sat_2300 = fri_2300 + 86400
    rows = []
    for t in (fri_2300, sat_0300, sat_2300):
        rows += [R(t, "d", "m", 1.0), R(t + 1, "d", "m", -1.0)]
    assert fired_at(run(e, rows)) == [fri_2300, sat_0300]


def test_cel_expression_over_event_and_latest_states() -> None:
    e = engine(
        """
rules:
  - id: humid-and-warm
    select: {device: bathroom, metric: humidity}
    trigger: {type: threshold, above: 70}
    conditions:
      - expr: 'value > 70.0 && state["bathroom/temperature"] >= 24.0 && device.startsWith("bath")'
    actions: [{mqtt: {topic: fan, payload: "ON"}}]
"""
    )
    rows = [
        R(0, "bathroom", "temperature", 22.0),
        R(1, "bathroom", "humidity", 75.0),  # too cool
        R(2, "bathroom", "humidity", 60.0),
        R(3, "bathroom", "temperature", 25.0),
        R(4, "bathroom", "humidity", 80.0),
    ]
    assert fired_at(run(e, rows)) == [4.0]


def test_cooldown_suppresses_fires_per_rule_and_device() -> None:
    e = engine(
        """
rules:
  - id: hot
    cooldown: 60s
    select: {metric: temperature}
    trigger: {type: threshold, above: 30}
    actions: [{mqtt: {topic: "fan/{device}", payload: "ON"}}]
"""
    )
    values = [31, 29, 31, 29, 31]  # crossings at 0, 20, 40 and then at 70
    rows = [R(t, "a", "temperature", v) for t, v in zip((0, 10, 20, 30, 40), values, strict=True)]
    rows += [
        R(50, "b", "temperature", 31),
        R(60, "a", "temperature", 29),
        R(70, "a", "temperature", 31),
    ]
    out = run(e, rows)
    assert [(o.time, o.topic) for o in out if isinstance(o, Command)] == [
        (0.0, "fan/a"),
        (50.0, "fan/b"),  # another device has its own cooldown
        (70.0, "fan/a"),
    ]
    assert e.counters()["cooldown_suppressed"] == 2


def test_out_of_order_reading_in_a_batch_is_evaluated_in_event_time_order() -> None:
    e = threshold("above: 30", allowed_lateness=5.0)
    rows = [
        R(2, "room", "temperature", 31),
        R(1, "room", "temperature", 29),
        R(3, "room", "temperature", 32),
    ]
    assert fired_at(run(e, rows)) == [2.0]


def test_late_reading_within_lateness_breaks_a_pending_for() -> None:
    e = threshold("above: 30, for: 10s", allowed_lateness=5.0)
    run(e, [R(0, "room", "temperature", 31), R(8, "room", "temperature", 31)])
    # arrives after t=8 but belongs at t=4: the value was not above 30 throughout
    run(e, [R(4, "room", "temperature", 29)])
    assert fired_at(e.tick(100.0)) == []


def test_late_reading_does_not_flip_current_state_backwards() -> None:
    e = threshold("above: 30", allowed_lateness=5.0)
    assert fired_at(
        run(e, [R(0, "room", "temperature", 29), R(10, "room", "temperature", 31)])
    ) == [10.0]
    # a reading from t=8 (before the crossing) must not re-arm the rule
    assert (
        fired_at(run(e, [R(8, "room", "temperature", 29), R(11, "room", "temperature", 32)])) == []
    )


def test_reading_beyond_allowed_lateness_is_counted_and_ignored() -> None:
    e = threshold("above: 30", allowed_lateness=5.0)
    run(e, [R(100, "room", "temperature", 31)])
    out = run(e, [R(90, "room", "temperature", 29), R(101, "room", "temperature", 31)])
    assert fired_at(out) == []
    assert e.counters()["late_dropped"] == 1


def test_restart_in_the_middle_of_for_fires_exactly_once_at_the_right_time() -> None:
    text = THRESHOLD_FOR
    before = engine(text, allowed_lateness=2.0)
    run(
        before,
        [R(0, "freezer", "temperature", -18), R(100, "freezer", "temperature", -10)],
        now=400.0,
    )
    saved = json.loads(json.dumps(before.snapshot()))  # it goes through the buffer as JSON

    after = engine(text, allowed_lateness=2.0)
    after.restore(saved)
    assert after.tick(500.0) == []
    out = after.tick(703.0)
    alerts = [(o.time, o.state) for o in out if isinstance(o, AlertChange)]
    assert alerts == [(700.0, "raised")]  # entered at t=100, held for 600 s
    assert after.tick(2000.0) == []
    # the same reading republished after the restart (a retained message) changes nothing
    assert run(after, [R(2001, "freezer", "temperature", -10)]) == []


def test_restart_does_not_fire_when_value_changed_while_down() -> None:
    before = engine(THRESHOLD_FOR, allowed_lateness=2.0)
    run(before, [R(100, "freezer", "temperature", -10)], now=400.0)
    after = engine(THRESHOLD_FOR, allowed_lateness=2.0)
    after.restore(before.snapshot())
    # the broker delivers what the freezer sent while the gateway was down
    out = run(after, [R(500, "freezer", "temperature", -19)], now=1000.0)
    assert out == []


THRESHOLD_FOR = """
rules:
  - id: freezer-warm
    select: {device: freezer, metric: temperature}
    trigger: {type: threshold, above: -15, for: 10m}
    actions: [{alert: {severity: critical, message: "freezer at {value}"}}]
"""


def test_changed_rule_starts_afresh_and_clears_its_alert() -> None:
    before = threshold("above: 30")
    before_text = THRESHOLD_FOR
    old = engine(before_text)
    run(old, [R(0, "freezer", "temperature", -10)], now=700.0)
    assert len(old.alerts) == 1
    new = engine(before_text.replace("-15", "-12"))
    new.restore(old.snapshot())
    out = new.tick(701.0)
    assert [(o.state, o.rule_id) for o in out if isinstance(o, AlertChange)] == [
        ("cleared", "freezer-warm")
    ]
    assert before.rule_ids() == ["hot"]


def test_alert_is_raised_once_while_open() -> None:
    e = engine(
        """
rules:
  - id: leak
    select: {device: kitchen-leak, metric: water_leak}
    trigger: {type: state, to: true}
    actions:
      - alert: {severity: critical, message: "water on {device}"}
      - mqtt: {topic: commands/home/kitchen-valve/set, payload: "CLOSED"}
      - log: {message: "closing valve after {device} reported {state}", level: warning}
      - webhook: {url: "http://127.0.0.1:9/hook"}
    on_clear:
      - log: {message: "leak gone"}
"""
    )
    rows = [
        R(0, "kitchen-leak", "water_leak", 0.0, "false"),
        R(1, "kitchen-leak", "water_leak", 1.0, "true"),
        R(2, "kitchen-leak", "water_leak", 1.0, "true"),
        R(3, "kitchen-leak", "water_leak", 0.0, "false"),
    ]
    out = run(e, rows)
    kinds = [type(o).__name__ for o in out]
    assert kinds == ["AlertChange", "Command", "LogLine", "WebhookCall", "AlertChange", "LogLine"]
    log = next(o for o in out if isinstance(o, LogLine))
    assert log.message == "closing valve after kitchen-leak reported true"
    hook = next(o for o in out if isinstance(o, WebhookCall))
    assert json.loads(hook.body)["device"] == "kitchen-leak"


def test_template_tags_and_topic_select() -> None:
    e = engine(
        """
rules:
  - id: by-tag
    select: {topic: "sensors/+/+/temperature", tags: {site: home}}
    trigger: {type: threshold, above: 30}
    actions: [{mqtt: {topic: "alerts/{tag_site}/{device}", payload: "{{\\"v\\": {value}}}"}}]
"""
    )
    rows = [
        R(0, "a", "temperature", 31, topic="sensors/home/a/temperature", tags='{"site": "home"}'),
        R(1, "b", "temperature", 31, topic="sensors/work/b/temperature", tags='{"site": "work"}'),
        R(2, "c", "temperature", 31, topic="other/c/temperature", tags='{"site": "home"}'),
    ]
    out = run(e, rows)
    assert [(o.topic, o.payload) for o in out if isinstance(o, Command)] == [
        ("alerts/home/a", '{"v": 31}')
    ]


def test_rule_errors_name_file_rule_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        """
rules:
  - id: ok
    trigger: {type: threshold, above: 1}
    actions: [{log: {message: hi}}]
  - id: broken
    trigger: {type: threshold, above: 1, for: soon}
    actions: [{mqtt: {topic: "x/{nope}"}}]
  - id: two-levels
    trigger: {type: threshold, above: 1, below: 2}
    actions: [{log: {message: hi}}]
"""
    )
    with pytest.raises(RuleError) as caught:
        load_rule_files([bad])
    text = str(caught.value)
    assert f"{bad}: invalid rules" in text
    assert "rule 'broken': trigger.threshold.for: Value error" not in text
    assert "rule 'broken': trigger.threshold.for: 'soon' is not a duration" in text
    assert (
        "rule 'two-levels': trigger.threshold: give exactly one of above, below, outside, "
        "inside (got above, below)" in text
    )
    assert "rule 'broken': actions.0.mqtt.topic: unknown placeholder {nope}" in text


def test_sun_rules_need_a_location() -> None:
    rules = parse_rule_file(
        yaml.safe_load(
            """
rules:
  - id: porch
    trigger: {type: sun, event: sunset}
    actions: [{log: {message: dusk}}]
"""
        ),
        "porch.yaml",
    )
    with pytest.raises(
        RuleError, match=r"porch.yaml: rule 'porch': trigger: a `sun` trigger needs latitude"
    ):
        RuleEngine(rules)


def test_cel_syntax_error_is_reported_at_load() -> None:
    with pytest.raises(RuleError, match=r"rule 'x': conditions.0: expr: Failed to parse"):
        parse_rule_file(
            yaml.safe_load(
                """
rules:
  - id: x
    trigger: {type: threshold, above: 1}
    conditions: [{expr: "value >"}]
    actions: [{log: {message: m}}]
"""
            ),
            "x.yaml",
        )


def test_empty_batch_and_series_helper() -> None:
    e = threshold("above: 30")
    assert e.process(readings([])) == []
    assert fired_at(run(e, series("room", "temperature", [31]))) == [0.0]


def test_historical_readings_never_fire_live_rules() -> None:
    rules = threshold("above: 30")
    backfill = '{"historical":"true","node":"n1"}'
    assert fired_at(run(rules, [R(0, "room", "temperature", 20.0)])) == []
    # Backfilled history past the threshold: stored upstream, but no crossing for live rules.
    assert fired_at(run(rules, [R(1, "room", "temperature", 35.0, tags=backfill)])) == []
    assert fired_at(run(rules, [R(2, "room", "temperature", 35.0)])) == [2]
