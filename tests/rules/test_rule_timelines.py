"""A timeline per device: one device's wrong clock moves no other device's time, nor the
gateway's (schedules, `delay`); a silent device's timers run by the gateway's clock through its
lag; a switch of time source re-bases; the skew tags decide the time the rules use."""

from __future__ import annotations

import copy

from rulehelpers import engine, fired_at, threshold

from gateway.rules.actions import Command
from gateway.rules.engine import RuleEngine
from gateway.rules.testing import R, readings

T0 = 1_790_000_000.0  # 2026-09-21 14:13:20 UTC
HOUR = 3600.0

HOT = "above: 30"


def sent(t: float, device: str, value: float) -> R:
    """A temperature with the device's own time `t`, arriving 50 ms later."""
    return R(t, device, "temperature", value, arrival=t + 0.05)


def feed(e: RuleEngine, rows: list[R]) -> list[float]:
    """Each row as its own batch, as a live gateway sees them; the times of the commands."""
    out: list[float] = []
    for row in rows:
        out += fired_at(e.process(readings([row])))
    return out


def commands(e: RuleEngine, rows: list[R]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for row in rows:
        out += [(o.topic, o.payload) for o in e.process(readings([row])) if isinstance(o, Command)]
    return out


QUIET = """
rules:
  - id: quiet
    select: {device: behind}
    trigger: {type: silence, for: 60s}
    actions: [{mqtt: {topic: alarm, payload: "{device} silent"}}]
"""

HOUSE = """
rules:
  - id: hot
    select: {metric: temperature}
    trigger: {type: threshold, above: 30}
    actions:
      - mqtt: {topic: "commands/{device}/fan", payload: "ON {value}"}
"""


def test_one_wrong_clock_silences_no_other_device() -> None:
    """The issue's four devices, each sending 29 then 31 with its own time: on time, 10 s
    behind, an hour ahead, and on time again after the one ahead. Every one fires."""
    e = engine(HOUSE, allowed_lateness=2.0)
    rows = [
        R(T0, "on-time", "temperature", 29.0),
        R(T0 + 1, "on-time", "temperature", 31.0),
        R(T0 - 8, "behind", "temperature", 29.0, arrival=T0 + 2),
        R(T0 - 7, "behind", "temperature", 31.0, arrival=T0 + 3),
        R(T0 + HOUR + 4, "ahead", "temperature", 29.0, arrival=T0 + 4),
        R(T0 + HOUR + 5, "ahead", "temperature", 31.0, arrival=T0 + 5),
        R(T0 + 6, "after", "temperature", 29.0),
        R(T0 + 7, "after", "temperature", 31.0),
    ]
    out = commands(e, rows)
    assert out == [
        ("commands/on-time/fan", "ON 31"),
        ("commands/behind/fan", "ON 31"),
        ("commands/ahead/fan", "ON 31"),
        ("commands/after/fan", "ON 31"),
    ]
    assert e.stats.late_dropped == 0
    assert e.clock == T0 + 7  # the gateway's clock: arrival times, not the hour ahead


def test_a_device_late_on_its_own_timeline_is_still_late() -> None:
    e = threshold(HOT, allowed_lateness=2.0)
    # Device times, each arriving 50 ms after it was sent.
    feed(e, [sent(T0, "room", 25.0), sent(T0 + 10, "room", 26.0)])
    assert feed(e, [R(T0 + 5, "room", "temperature", 35.0, arrival=T0 + 11)]) == []
    assert e.stats.late_dropped == 1
    assert e.timelines["room"].late == 1


def test_silence_of_a_device_behind_runs_by_the_gateway_clock_through_its_lag() -> None:
    e = engine(QUIET, allowed_lateness=2.0)
    # Its clock runs 10 s behind; its last reading says T0-10 and arrives at T0.
    feed(e, [R(T0 - 10, "behind", "temperature", 20.0, arrival=T0)])
    # Due at device time T0+50, i.e. gateway time T0+60, plus the lateness.
    assert fired_at(e.tick(T0 + 61.9)) == []
    assert fired_at(e.tick(T0 + 62.1)) == [T0 + 50]
    # A reading of it still queued at the broker, older than the silence, is late; a newer
    # one is not: the timeline moved only as far as the timer it ran.
    assert feed(e, [R(T0 + 40, "behind", "temperature", 20.0, arrival=T0 + 63)]) == []
    assert e.timelines["behind"].late == 1
    assert e.timelines["behind"].clock == T0 + 52
    feed(e, [R(T0 + 53, "behind", "temperature", 20.0, arrival=T0 + 64)])
    assert e.timelines["behind"].late == 1


def test_for_on_a_device_ahead_waits_its_own_time_not_the_gateway_clock() -> None:
    e = threshold(f"{HOT}, for: 30s", allowed_lateness=0.0)
    feed(e, [R(T0 + HOUR, "room", "temperature", 35.0, arrival=T0)])
    assert fired_at(e.tick(T0 + 29)) == []
    assert fired_at(e.tick(T0 + 30)) == [T0 + HOUR + 30]  # the device's time, stamped


def test_a_device_that_stops_sending_times_is_rebased_not_silenced() -> None:
    e = threshold(HOT, allowed_lateness=2.0)
    # A minute ahead (inside a route's default skew bound), then it sends no time at all:
    # its readings take their arrival time, a minute behind its own clock.
    feed(e, [R(T0 + 60, "room", "temperature", 25.0, arrival=T0)])
    assert feed(e, [R(T0 + 1, "room", "temperature", 29.0)]) == []
    # It goes on a minute ahead: its times are shifted into its frame.
    assert feed(e, [R(T0 + 2, "room", "temperature", 31.0)]) == [T0 + 62]
    assert e.stats.late_dropped == 0
    assert e.timelines["room"].shift == 60.0
    assert e.timelines["room"].device_timed is False


def test_skew_tags_choose_the_time_the_rules_use() -> None:
    e = threshold(f"{HOT}, for: 10s", allowed_lateness=0.0)
    adjusted = '{"clock_skew":"adjusted"}'
    dropped = '{"clock_skew":"dropped"}'
    day = 86400.0
    # A day behind, adjusted: runs on its arrival time, so `for` counts from T0.
    feed(e, [R(T0 - day, "room", "temperature", 35.0, tags=adjusted, arrival=T0)])
    assert fired_at(e.tick(T0 + 10)) == [T0 + 10]
    # Dropped: not evaluated at all (a drop below 30 would have re-armed the rule).
    feed(e, [R(T0 - day, "room", "temperature", 20.0, tags=dropped, arrival=T0 + 11)])
    feed(e, [R(T0 + 12, "room", "temperature", 35.0)])
    assert fired_at(e.tick(T0 + 30)) == []
    tl = e.timelines["room"]
    assert (tl.skew_adjusted, tl.skew_dropped) == (1, 1)
    assert (e.stats.clock_skew_adjusted, e.stats.clock_skew_dropped) == (1, 1)


def test_schedules_and_delays_stay_on_the_gateway_clock() -> None:
    e = engine(
        """
rules:
  - id: pulse
    select: {device: ahead}
    trigger: {type: threshold, above: 30}
    actions:
      - mqtt: {topic: siren, payload: "ON"}
      - delay: 2m
      - mqtt: {topic: siren, payload: "OFF"}
  - id: noon
    trigger: {type: schedule, cron: "0 15 * * *"}
    actions: [{mqtt: {topic: noon, payload: "x"}}]
""",
        allowed_lateness=0.0,
    )
    # 14:13:20 UTC at the gateway; the device says 15:13:20.
    out = commands(e, [R(T0 + HOUR, "ahead", "temperature", 35.0, arrival=T0)])
    assert out == [("siren", "ON")]  # and the 15:00 schedule did not run
    assert [o.payload for o in e.tick(T0 + 119) if isinstance(o, Command)] == []
    assert [o.payload for o in e.tick(T0 + 120) if isinstance(o, Command)] == ["OFF"]
    assert [o.topic for o in e.tick(T0 + 46 * 60 + 40) if isinstance(o, Command)] == ["noon"]


def test_timelines_survive_a_snapshot() -> None:
    e = engine(QUIET, allowed_lateness=0.0)
    feed(e, [R(T0 - 10, "behind", "temperature", 20.0, arrival=T0)])
    saved = copy.deepcopy(e.snapshot())
    restarted = engine(QUIET, allowed_lateness=0.0)
    restarted.restore(saved)
    assert restarted.timelines["behind"].lag == 10.0
    assert fired_at(restarted.tick(T0 + 59)) == []
    assert fired_at(restarted.tick(T0 + 60)) == [T0 + 50]


def test_group_windows_share_one_timeline() -> None:
    e = engine(
        """
rules:
  - id: house-hot
    select: {metric: temperature}
    trigger: {type: window, kind: tumbling, size: 10s, agg: max, above: 30, group: all}
    actions: [{mqtt: {topic: house, payload: "{value}"}}]
""",
        allowed_lateness=0.0,
    )
    start = 1_790_000_000.0  # a multiple of 10
    feed(e, [sent(start + 1, "a", 20.0), sent(start + 2, "b", 35.0)])
    assert feed(e, [sent(start + 11, "a", 20.0)]) == [start + 10]
    # A reading of the closed window comes too late for the group, not for its device.
    assert feed(e, [R(start + 9, "c", "temperature", 40.0, arrival=start + 12)]) == []
    assert e.timelines["c"].late == 0
    assert e.group_timeline.late == 1


def test_a_backtest_fires_what_the_live_engine_fired() -> None:
    """`rules test` and a restart's replay read readings from the buffer in arrival order, ticks
    unknown: the gateway's clock then moves with the arrival times alone."""
    text = (
        HOUSE
        + """
  - id: quiet
    select: {device: [behind, ahead]}
    trigger: {type: silence, for: 30s}
    actions: [{mqtt: {topic: "silent/{device}", payload: "x"}}]
"""
    )
    rows = [
        R(T0 - 10, "behind", "temperature", 29.0, arrival=T0),
        R(T0 + HOUR, "ahead", "temperature", 31.0, arrival=T0 + 1),
        R(T0 - 5, "behind", "temperature", 31.0, arrival=T0 + 5),
        *[sent(T0 + 10 + k, "on-time", 20.0 + k) for k in range(60)],  # ahead falls silent
        R(T0 + HOUR + 70, "ahead", "temperature", 29.0, arrival=T0 + 71),
    ]
    live = engine(text, allowed_lateness=2.0)
    live_out: list[tuple[str, float]] = []
    for row in rows:
        batch = live.process(readings([row]), now=row.arrival or row.time)
        live_out += [(o.topic, o.time) for o in batch if isinstance(o, Command)]
    replayed = engine(text, allowed_lateness=2.0)
    out = replayed.process(readings(rows))
    assert [(o.topic, o.time) for o in out if isinstance(o, Command)] == live_out
    assert ("silent/ahead", T0 + HOUR + 30) in live_out  # on its own time, woken by arrivals
    assert "silent/behind" in {topic for topic, _ in live_out}
