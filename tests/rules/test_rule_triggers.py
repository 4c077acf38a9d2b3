"""Triggers of the pure engine, specified with event times passed in (no broker, no sleeping)."""

from __future__ import annotations

import pytest
from rulehelpers import engine, fired_at, run, series, threshold

from gateway.rules.actions import AlertChange, Command
from gateway.rules.engine import RuleEngine
from gateway.rules.testing import R


def test_threshold_fires_once_on_crossing() -> None:
    e = threshold("above: 30")
    out = run(e, series("room", "temperature", [29.9, 30.0, 30.1, 29.9, 30.1]))
    assert fired_at(out) == [2.0, 4.0]
    assert [o.payload for o in out if isinstance(o, Command)] == ["ON 30.1", "ON 30.1"]
    assert [o.topic for o in out if isinstance(o, Command)] == ["commands/room/fan"] * 2


def test_value_equal_to_threshold_does_not_fire() -> None:
    assert fired_at(run(threshold("above: 30"), series("room", "temperature", [29, 30, 30]))) == []
    assert fired_at(run(threshold("below: 30"), series("room", "temperature", [31, 30, 30]))) == []


def test_value_staying_past_threshold_never_fires_again() -> None:
    out = run(threshold("above: 30"), series("room", "temperature", [29, 31, 32, 35, 31]))
    assert fired_at(out) == [1.0]


def test_hysteresis_fires_on_upper_and_rearms_below_lower() -> None:
    e = threshold("above: 30, hysteresis: 0.5")
    out = run(e, series("room", "temperature", [29.0, 30.6, 29.8, 30.6, 29.4, 30.6]))
    assert fired_at(out) == [1.0, 5.0]


def test_value_hovering_at_threshold_fires_once_with_hysteresis() -> None:
    hovering = [29.0, 30.6, 29.9, 30.2, 29.7, 30.4, 29.6, 30.3, 29.8, 30.1]
    assert fired_at(
        run(threshold("above: 30, hysteresis: 0.5"), series("room", "temperature", hovering))
    ) == [1.0]
    # the same values without hysteresis flap on every upward crossing
    assert len(fired_at(run(threshold("above: 30"), series("room", "temperature", hovering)))) == 5


def test_below_outside_inside_levels_are_strict() -> None:
    assert fired_at(run(threshold("below: 10"), series("room", "temperature", [11, 10, 9.9]))) == [
        2.0
    ]
    out = run(
        threshold("outside: [10, 20]"), series("room", "temperature", [15, 20, 20.1, 15, 10, 9])
    )
    assert fired_at(out) == [2.0, 5.0]
    out = run(threshold("inside: [10, 20]"), series("room", "temperature", [5, 10, 10.5, 25, 19]))
    assert fired_at(out) == [2.0, 4.0]


def test_unknown_reading_rearms_and_text_is_counted_and_ignored() -> None:
    e = threshold("above: 30")
    rows = [
        R(0, "room", "temperature", 31.0),
        R(1, "room", "temperature", text="unavailable"),
        R(2, "room", "temperature", 31.0),
        R(3, "room", "temperature", text="hot!"),
        R(4, "room", "temperature", 32.0),
    ]
    assert fired_at(run(e, rows)) == [0.0, 2.0]
    assert e.counters()["non_numeric"] == 1


def test_state_is_kept_per_device() -> None:
    e = engine(
        """
rules:
  - id: hot
    select: {metric: temperature}
    trigger: {type: threshold, above: 30}
    actions: [{mqtt: {topic: "fan/{device}", payload: "ON"}}]
"""
    )
    out = run(
        e,
        [
            R(0, "a", "temperature", 31),
            R(1, "b", "temperature", 29),
            R(2, "b", "temperature", 31),
            R(3, "a", "temperature", 32),
        ],
    )
    assert [(o.time, o.topic) for o in out if isinstance(o, Command)] == [
        (0.0, "fan/a"),
        (2.0, "fan/b"),
    ]


def test_for_fires_when_condition_held_throughout() -> None:
    e = threshold("above: 30, for: 10s")
    out = run(e, series("room", "temperature", [29, 31, 31, 32]), now=5.0)
    assert fired_at(out) == []
    assert fired_at(e.tick(10.9)) == []
    assert fired_at(e.tick(11.0)) == [11.0]  # entered at t=1, held 10 s
    assert fired_at(e.tick(100.0)) == []


def test_for_is_reset_by_one_reading_back() -> None:
    e = threshold("above: 30, for: 10s")
    rows = [
        R(0, "room", "temperature", 31),
        R(5, "room", "temperature", 29.9),
        R(6, "room", "temperature", 31),
    ]
    assert fired_at(run(e, rows, now=15.0)) == []  # the t=0 entry was cancelled at t=5
    assert fired_at(e.tick(16.0)) == [16.0]  # the next entry (t=6) restarted it


def test_for_waits_for_the_allowed_lateness() -> None:
    e = threshold("above: 30, for: 10s", allowed_lateness=2.0)
    run(e, [R(0, "room", "temperature", 31)])
    assert fired_at(e.tick(11.0)) == []  # a reading for t < 10 could still arrive
    assert fired_at(e.tick(12.0)) == [10.0]  # fires with the event time it became true


def test_deadband_ignores_small_changes_against_last_output() -> None:
    e = threshold("above: 30, deadband: {gap: 1.0}")
    # 29.5 -> 30.2 is a change of 0.7 < 1: ignored, so no crossing; 30.6 differs by 1.1: counts
    out = run(e, series("room", "temperature", [29.5, 30.2, 30.6]))
    assert fired_at(out) == [2.0]


def test_deadband_percent_against_last_input() -> None:
    e = threshold("above: 100, deadband: {gap: 5, percent: true, against: last_input}")
    # each step is < 5% of the previous input, so a slow creep never passes the deadband
    out = run(e, series("room", "temperature", [96, 99, 102, 105, 108]))
    assert fired_at(out) == []
    assert fired_at(run(e, [R(10, "room", "temperature", 120)])) == [10.0]


def test_clearing_condition_resolves_the_alert() -> None:
    e = engine(
        """
rules:
  - id: freezer-warm
    select: {device: freezer, metric: temperature}
    trigger: {type: threshold, above: -15, clear: {below: -17}}
    actions: [{alert: {severity: critical, message: "freezer at {value}"}}]
"""
    )
    out = run(e, series("freezer", "temperature", [-18, -14, -16, -17.5, -14]))
    changes = [(o.time, o.state, o.severity) for o in out if isinstance(o, AlertChange)]
    assert changes == [
        (1.0, "raised", "critical"),
        (3.0, "cleared", "critical"),
        (4.0, "raised", "critical"),
    ]
    assert next(o.message for o in out if isinstance(o, AlertChange)) == "freezer at -14"


STATE = """
rules:
  - id: door-left-open
    select: {device: front-door, metric: contact}
    trigger: {type: state, to: open, for: 30s}
    actions: [{alert: {severity: warning, message: "door open"}}]
"""


def test_state_trigger_with_for_and_clear() -> None:
    e = engine(STATE)
    rows = [
        R(0, "front-door", "contact", text="closed"),
        R(10, "front-door", "contact", text="open"),
    ]
    assert run(e, rows, now=39.0) == []
    raised = e.tick(40.0)
    assert [(o.time, o.state) for o in raised if isinstance(o, AlertChange)] == [(40.0, "raised")]
    cleared = run(e, [R(50, "front-door", "contact", text="closed")])
    assert [(o.time, o.state) for o in cleared if isinstance(o, AlertChange)] == [(50.0, "cleared")]


def test_state_trigger_reset_by_change_and_repeats_are_not_changes() -> None:
    e = engine(STATE)
    rows = [
        R(0, "front-door", "contact", text="open"),
        R(20, "front-door", "contact", text="closed"),
        R(25, "front-door", "contact", text="open"),
        R(40, "front-door", "contact", text="open"),  # republished: not a new change
    ]
    assert run(e, rows, now=54.0) == []
    assert [o.time for o in e.tick(56.0)] == [55.0]


def test_state_trigger_to_and_from_booleans() -> None:
    e = engine(
        """
rules:
  - id: motion
    select: {device: hallway-motion, metric: occupancy}
    trigger: {type: state, from: false, to: true}
    actions: [{mqtt: {topic: lights/hallway, payload: "ON"}}]
"""
    )
    rows = [
        R(0, "hallway-motion", "occupancy", 1.0, "true"),  # from unknown: no `from` match
        R(1, "hallway-motion", "occupancy", 0.0, "false"),
        R(2, "hallway-motion", "occupancy", 1.0, "true"),
    ]
    assert fired_at(run(e, rows)) == [2.0]


def test_rate_of_change_over_window() -> None:
    e = engine(
        """
rules:
  - id: fast-rise
    select: {device: boiler, metric: temperature}
    trigger: {type: rate, window: 60s, per: 60s, above: 5}
    actions: [{mqtt: {topic: alarm, payload: "{value}"}}]
"""
    )
    # +1 per 30 s is 2/min; then +10 in 30 s: over the 60 s window [30, 90] (62-51)/60 s = 11/min
    rows = [
        R(0, "boiler", "temperature", 50),
        R(30, "boiler", "temperature", 51),
        R(60, "boiler", "temperature", 52),
        R(90, "boiler", "temperature", 62),
    ]
    out = run(e, rows)
    assert [(o.time, o.payload) for o in out if isinstance(o, Command)] == [(90.0, "11")]


def test_silence_fires_when_device_goes_quiet_and_clears_on_recovery() -> None:
    e = engine(
        """
rules:
  - id: offline
    select: {device: [hallway-motion, kitchen-leak]}
    trigger: {type: silence, for: 60s}
    actions: [{alert: {severity: warning, message: "{device} offline"}}]
"""
    )
    run(e, [R(0, "hallway-motion", "occupancy", 0.0), R(30, "hallway-motion", "occupancy", 1.0)])
    # kitchen-leak never reported: watched from the engine's first moment (t=0)
    out = e.tick(60.0)
    assert [(o.device, o.time, o.state) for o in out if isinstance(o, AlertChange)] == [
        ("kitchen-leak", 60.0, "raised")
    ]
    out = e.tick(90.0)
    assert [(o.device, o.time, o.state) for o in out if isinstance(o, AlertChange)] == [
        ("hallway-motion", 90.0, "raised")
    ]
    assert e.tick(500.0) == []  # silent devices alert once
    out = run(e, [R(501, "hallway-motion", "occupancy", 0.0)])
    assert [(o.device, o.time, o.state) for o in out if isinstance(o, AlertChange)] == [
        ("hallway-motion", 501.0, "cleared")
    ]


WINDOW = """
rules:
  - id: window
    select: {{metric: power}}
    trigger: {{type: window, {trigger}}}
    actions: [{{mqtt: {{topic: "w/{{device}}", payload: "{{value}}"}}}}]
"""


def window(trigger: str) -> RuleEngine:
    return engine(WINDOW.format(trigger=trigger))


def test_tumbling_window_start_is_inclusive_end_exclusive() -> None:
    e = window("kind: tumbling, size: 60s, agg: sum, above: 10")
    # [0, 60) holds t=0 and t=59.999 (sum 6, closed by the reading at exactly 60, which opens
    # [60, 120)); the window's result carries its end as event time
    out = run(e, [R(0, "m", "power", 3), R(59.999, "m", "power", 3), R(60, "m", "power", 8)])
    assert out == []
    out = run(e, [R(100, "m", "power", 5)], now=119.999)
    assert out == []
    out = e.tick(120.0)
    assert [(o.time, o.payload) for o in out if isinstance(o, Command)] == [(120.0, "13")]


def test_hopping_window_counts_a_reading_in_each_overlapping_window() -> None:
    e = window("kind: hopping, size: 60s, hop: 30s, agg: count, above: 1")
    # t=45 and t=50 fall in [0,60) and [30,90)
    run(e, [R(45, "m", "power", 1), R(50, "m", "power", 1)])
    out = e.tick(60.0)
    assert [(o.time, o.payload) for o in out if isinstance(o, Command)] == [(60.0, "2")]
    # t=70 falls in [30,90) and [60,120): [30,90) then holds 3, still above: no second fire
    run(e, [R(70, "m", "power", 1)])
    assert e.tick(90.0) == []
    # [60,120) holds 1 (re-arms); [90,150) is empty and not emitted; t=130 and t=140 fill
    # [120,180) and [90,150) which cross again at 150
    run(e, [R(130, "m", "power", 1), R(140, "m", "power", 1)])
    out = e.tick(150.0)
    assert [(o.time, o.payload) for o in out if isinstance(o, Command)] == [(150.0, "2")]


def test_sliding_window_excludes_reading_exactly_size_ago() -> None:
    e = window("kind: sliding, size: 10s, agg: avg, above: 15")
    # at t=10 the window is (0, 10]: 20 only (the reading at t=0 has left) -> avg 20 fires
    out = run(e, [R(0, "m", "power", 0), R(5, "m", "power", 20)])
    assert out == []  # (-5, 5]: avg 10
    out = run(e, [R(10, "m", "power", 20)])
    assert [(o.time, o.payload) for o in out if isinstance(o, Command)] == [(10.0, "20")]


def test_group_window_aggregates_across_devices() -> None:
    e = window("kind: tumbling, size: 60s, agg: max, group: all, above: 100")
    out = run(e, [R(1, "a", "power", 60), R(2, "b", "power", 120)], now=60.0)
    assert [(o.topic, o.payload) for o in out if isinstance(o, Command)] == [("w/*", "120")]


def test_schedule_fires_on_cron_minutes_in_local_time() -> None:
    e = engine(
        """
rules:
  - id: morning
    trigger: {type: schedule, cron: "30 7 * * mon-fri"}
    actions: [{mqtt: {topic: blinds, payload: "UP {time}"}}]
""",
        timezone="Europe/Amsterdam",
    )
    friday_0700 = 1718946000.0  # 2024-06-21 07:00 CEST
    assert e.tick(friday_0700) == []
    out = e.tick(friday_0700 + 3600)
    assert [o.payload for o in out if isinstance(o, Command)] == [
        "UP 2024-06-21T05:30:00.000+00:00"
    ]
    # Saturday and Sunday pass without firing; Monday 07:30 fires
    assert e.tick(friday_0700 + 86400 * 2) == []
    out = e.tick(friday_0700 + 86400 * 3 + 3600)
    assert len(out) == 1


def test_sun_trigger_fires_at_sunset_with_offset() -> None:
    e = engine(
        """
rules:
  - id: porch
    trigger: {type: sun, event: sunset, offset: -30m}
    actions: [{mqtt: {topic: porch, payload: "ON"}}]
""",
        latitude=51.5074,
        longitude=-0.1278,
        timezone="Europe/London",
    )
    noon = 1734782400.0  # 2024-12-21 12:00 UTC
    e.tick(noon)
    out = e.tick(noon + 6 * 3600)
    # London sunset on 2024-12-21 is 15:53 UTC; 30 minutes earlier is 15:23
    (command,) = [o for o in out if isinstance(o, Command)]
    assert abs(command.time - (noon + 3 * 3600 + 23 * 60 + 34)) < 90


@pytest.mark.parametrize("mode", ["ignore", "restart", "queue"])
def test_retrigger_modes_while_sequence_runs(mode: str) -> None:
    e = engine(
        f"""
rules:
  - id: light
    mode: {mode}
    select: {{device: motion, metric: occupancy}}
    trigger: {{type: state, to: true}}
    actions:
      - mqtt: {{topic: light, payload: "ON"}}
      - delay: 60s
      - mqtt: {{topic: light, payload: "OFF"}}
"""
    )
    rows = [
        R(0, "motion", "occupancy", 1.0, "true"),
        R(10, "motion", "occupancy", 0.0, "false"),
        R(20, "motion", "occupancy", 1.0, "true"),
    ]
    out = run(e, rows, now=1000.0)
    got = [(o.time, o.payload) for o in out if isinstance(o, Command)]
    expected = {
        "ignore": [(0.0, "ON"), (60.0, "OFF")],
        "restart": [(0.0, "ON"), (20.0, "ON"), (80.0, "OFF")],
        "queue": [(0.0, "ON"), (60.0, "OFF"), (60.0, "ON"), (120.0, "OFF")],
    }[mode]
    assert got == expected
