"""The rule engine: committed readings and ticks in, actions out; pure, replayable, restorable.

Two kinds of time. Each device has its own timeline (timeline.py): the times its readings carry,
a watermark `allowed_lateness` behind the latest, its own late readings and its own timers
(`for`, silence, windows). The gateway's clock is the latest arrival time or tick seen; it runs
schedules, sun events and `delay` steps, and wakes the timers of silent devices. So one device's
wrong clock moves no other device's time, and none of the gateway's.

Readings are evaluated in arrival order. One older than its device's watermark is counted as
late and dropped; one out of order but within the lateness is handed to the triggers, which use
it to break a pending `for` or fill a window but never to move the current state backwards. A
route's skew policy (gateway/ingest/skew.py) marks readings whose device time is too far from
their arrival: `adjusted` ones run on their arrival time, `dropped` ones are not evaluated.

`RuleEngine` ties the pieces together: `compile` (rules -> compiled rules and their trigger
runners, from `triggers`), `timers`, `steps` (running actions; the open alerts) and `snapshot`
(state saved and restored). It evaluates batches, advances time, and is the host the trigger
runners call to fire, clear and arm timers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pyarrow as pa

from gateway.errors import RuleError
from gateway.model import HISTORICAL_TAG, SKEW_ADJUSTED, SKEW_DROPPED, SKEW_TAG, ReadingColumns
from gateway.rules.actions import Command, Event, Output
from gateway.rules.compile import CompiledRule, compile_rules
from gateway.rules.conditions import Env, Latest
from gateway.rules.schema import LoadedRule
from gateway.rules.snapshot import SNAPSHOT_VERSION, restore_snapshot, take_snapshot
from gateway.rules.stats import EngineStats
from gateway.rules.steps import ActionRunner, AlertKey
from gateway.rules.timeline import Timeline
from gateway.rules.timers import Timers
from gateway.rules.triggers.base import GROUP_KEY, Key, Runner

__all__ = ["SNAPSHOT_VERSION", "EngineStats", "RuleEngine"]

_CACHE_LIMIT = 100_000
_WAKE_KEY: Key = ("", "")

Handler = Callable[[Key, float, float | None, str | None], None]
# What a (device, metric, topic, tags) resolves to: the device's timeline, the handlers on it,
# and the handlers of windows across devices (on the group timeline).
Route = tuple[Timeline, list[Handler], list[Handler]]


class RuleEngine:
    """Compiled rules and their state. Not thread-safe: one task feeds it."""

    def __init__(
        self,
        rules: Sequence[LoadedRule],
        *,
        latitude: float | None = None,
        longitude: float | None = None,
        timezone: str = "UTC",
        allowed_lateness: float = 2.0,
        misfire_grace: float = 60.0,
    ) -> None:
        try:
            zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise RuleError(f"location.timezone: unknown time zone {timezone!r}") from None
        self.env = Env(zone=zone, latitude=latitude, longitude=longitude)
        self.lateness = allowed_lateness
        self.misfire_grace = misfire_grace
        self.stats = EngineStats()
        self.clock = float("-inf")  # the gateway's clock: the latest arrival time or tick
        self.last_reading_id = 0  # the highest buffer id processed (restart replays after it)
        self._primed = False
        self._priming = False
        self.timers = Timers()  # on the gateway's clock
        self.timelines: dict[str, Timeline] = {}  # one per device
        self.group_timeline = Timeline(rebases=False)  # windows across devices
        self.actions = ActionRunner(self.stats, self.timers, lambda: self.clock)
        self._cache: dict[tuple[str, str, str, str | None], Route] = {}
        self.rules: list[CompiledRule] = compile_rules(rules, self, self.env, misfire_grace)

    @property
    def alerts(self) -> dict[AlertKey, list[Any]]:
        """(rule id, device, metric) -> [severity, message, raised at]: raised, not cleared."""
        return self.actions.alerts

    # -- input ----------------------------------------------------------------------------
    def process(
        self,
        readings: pa.Table | ReadingColumns,
        now: float | None = None,
        *,
        prime: bool = False,
        on_command: Callable[[Command], None] | None = None,
    ) -> list[Output]:
        """Evaluate a batch (READINGS_SCHEMA, or its columns as lists; `id`/`event_id` are
        missing before commit), then advance to `now` if given.

        `prime`: the readings are known state, not news (an MQTT broker's retained messages on
        subscribing): they update triggers and latest states but fire nothing, so a value
        already past a threshold is not taken for a crossing.
        `on_command`: called with each command as it is made (live rules publish it then,
        before the rest of the batch is evaluated); the outputs returned hold it too."""
        columns = readings if isinstance(readings, ReadingColumns) else ReadingColumns.of(readings)
        n = len(columns)
        if n:
            self._priming = prime
            self.actions.send = on_command
            try:
                self._evaluate(columns, n)
            finally:
                self._priming = False
                self.actions.send = None
        if now is not None:
            self._advance(now)
        return self.actions.take()

    def tick(self, now: float) -> list[Output]:
        """Advance the gateway's clock with no readings: runs due schedules and delays, and the
        timers of devices that went silent."""
        return self.process(_EMPTY, now)

    def _evaluate(self, columns: ReadingColumns, n: int) -> None:
        times = [m / 1e6 for m in columns.event_time]
        arrivals = [m / 1e6 for m in columns.ingest_time]
        devices = columns.device
        metrics = columns.metric
        values = columns.value
        texts = columns.text
        topics = columns.topic
        tags = columns.tags
        # Readings evaluated as they arrive have no ids yet (the buffer assigns them on commit).
        ids: Sequence[str | None] = columns.event_id or [None] * n
        skipped: set[int] = set()
        if any(tag is not None and (HISTORICAL_TAG in tag or SKEW_TAG in tag) for tag in tags):
            skipped = self._apply_tags(tags, times, arrivals, devices)
        if not self._primed:
            self._prime(arrivals[0])
        lateness = self.lateness
        clock = self.clock
        latest = self.env.latest
        cache = self._cache
        clock_timers = self.timers.heap
        group = self.group_timeline
        late = evaluations = 0
        for i in range(n):
            a = arrivals[i]
            if a > clock:
                clock = self.clock = a
                if clock_timers and clock_timers[0][0] <= a:
                    self.timers.run(a)
            if skipped and i in skipped:
                continue
            t = times[i]
            device = devices[i]
            metric = metrics[i]
            topic = topics[i]
            tag = tags[i]
            route = cache.get((device, metric, topic, tag))
            if route is None:
                route = self._resolve(device, metric, topic, tag)
            timeline, handlers, shared = route
            timed = t != a
            key = (device, metric)
            value = values[i]
            text = texts[i]
            own_t = timeline.admit(t, a, timed, lateness)
            if own_t is not None:
                if timeline.timers.heap:
                    self._after_reading(timeline)
                previous = latest.get(key)
                if previous is None or own_t >= previous[0]:
                    latest[key] = (own_t, value, text, topic, tag, ids[i])
                for handler in handlers:
                    handler(key, own_t, value, text)
                evaluations += len(handlers)
            else:
                late += 1
            if shared:
                if group.admit(t, a, timed, lateness) is not None:
                    if group.timers.heap:
                        self._after_reading(group)
                    for handler in shared:
                        handler(key, t, value, text)
                    evaluations += len(shared)
                else:
                    late += 1
        if columns.id:
            self.last_reading_id = max(self.last_reading_id, *columns.id)
        stats = self.stats
        stats.readings += n
        stats.late_dropped += late
        stats.evaluations += evaluations

    def _apply_tags(
        self,
        tags: Sequence[str | None],
        times: list[float],
        arrivals: list[float],
        devices: Sequence[str],
    ) -> set[int]:
        """Readings the live rules skip (backfilled history, device times the route's skew
        policy dropped); readings whose device time it adjusted take their arrival time."""
        skipped: set[int] = set()
        stats = self.stats
        for i, tag in enumerate(tags):
            if tag is None:
                continue
            if HISTORICAL_TAG in tag:
                skipped.add(i)
            elif SKEW_ADJUSTED in tag:
                times[i] = arrivals[i]
                self._timeline(devices[i]).skew_adjusted += 1
                stats.clock_skew_adjusted += 1
            elif SKEW_DROPPED in tag:
                skipped.add(i)
                self._timeline(devices[i]).skew_dropped += 1
                stats.clock_skew_dropped += 1
        return skipped

    def _timeline(self, device: str) -> Timeline:
        timeline = self.timelines.get(device)
        if timeline is None:
            timeline = self.timelines[device] = Timeline()
        return timeline

    def _resolve(self, device: str, metric: str, topic: str, tags: str | None) -> Route:
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        own: list[Handler] = []
        shared: list[Handler] = []
        for r in self.rules:
            if r.matches(device, metric, topic, tags):
                (shared if r.runner.group else own).append(r.runner.on_reading)
        route = (self._timeline(device), own, shared)
        self._cache[(device, metric, topic, tags)] = route
        return route

    def _prime(self, clock: float) -> None:
        self._primed = True
        self.clock = max(self.clock, clock)
        for r in self.rules:
            r.runner.prime(self.clock)

    def _advance(self, now: float) -> None:
        if not self._primed:
            self._prime(now)
        self.clock = max(self.clock, now)
        self.timers.run(self.clock)

    # -- timelines ------------------------------------------------------------------------
    def _after_reading(self, timeline: Timeline) -> None:
        """A reading moved the timeline (or its lag): run what its watermark passed, and wake
        it sooner if its earliest timer is now due earlier by the gateway's clock."""
        if timeline.timers.heap[0][0] <= timeline.clock - self.lateness:
            timeline.timers.run(timeline.clock - self.lateness)
        self._schedule_wake(timeline)

    def _schedule_wake(self, timeline: Timeline) -> None:
        """Have the gateway's clock look at the timeline when its earliest timer is due by it
        (device time mapped through the lag), in case the device falls silent."""
        due = timeline.timers.next_due()
        if due is None:
            return
        at = due + timeline.lag + self.lateness
        if at < timeline.wake:
            timeline.wake = at
            self.timers.at(at, self, _WAKE_KEY, timeline)

    def on_timer(self, key: Key, due: float, arg: Any) -> None:
        """A timeline's wake-up on the gateway's clock: run the timers its silent device owes,
        moving its clock only as far as the last of them."""
        timeline: Timeline = arg
        if due != timeline.wake:
            return  # superseded by an earlier wake-up
        timeline.wake = float("inf")
        watermark = self.clock - timeline.lag - self.lateness
        last = timeline.timers.run(watermark)
        if last is not None and last + self.lateness > timeline.clock:
            timeline.clock = last + self.lateness
        self._schedule_wake(timeline)

    def timeline_views(self) -> list[dict[str, Any]]:
        """Each device's timeline as /api/rules shows it, the furthest from arrival time first."""
        views = [tl.view(device) for device, tl in self.timelines.items()]
        views.sort(key=lambda v: -abs(v["lag_s"]))
        return views

    # -- Host (called by the triggers) ------------------------------------------------------
    def at_watermark(self, due: float, runner: Runner, key: Key, arg: Any) -> None:
        timeline = self.group_timeline if key == GROUP_KEY else self._timeline(key[0])
        timeline.timers.at(due, runner, key, arg)
        self._schedule_wake(timeline)

    def at_clock(self, due: float, runner: Runner, key: Key, arg: Any) -> None:
        self.timers.at(due, runner, key, arg)

    def _event(
        self, r: CompiledRule, key: Key, t: float, value: float | None, text: str | None
    ) -> Event:
        latest: Latest | None = self.env.latest.get(key)
        if latest is None:
            return Event(r.id, key[0], key[1], t, value, text)
        return Event(r.id, key[0], key[1], t, value, text, latest[3], latest[4], latest[5])

    def fire(self, rule: int, key: Key, t: float, value: float | None, text: str | None) -> bool:
        stats = self.stats
        if self._priming:
            stats.primed += 1
            return False
        r = self.rules[rule]
        event = self._event(r, key, t, value, text)
        if r.check is not None and not r.check(event, self.env):
            stats.conditions_false += 1
            return False
        return self.actions.fire(r.actions, key, event, t)

    def clear(self, rule: int, key: Key, t: float, value: float | None, text: str | None) -> None:
        r = self.rules[rule]
        self.actions.clear(r.actions, key, self._event(r, key, t, value, text), t)

    # -- state ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Everything needed to continue after a restart, as JSON-able data (see snapshot.py)."""
        return take_snapshot(self)

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Continue from a snapshot. Rules whose definition changed start afresh; their open
        alerts are cleared (reported on the next call) rather than left dangling."""
        restored = restore_snapshot(self, snapshot)
        if restored is not None and restored.clock_known:
            self._primed = True
            for r in self.rules:
                if r.id not in restored.kept:
                    r.runner.prime(self.clock)

    def rule_ids(self) -> list[str]:
        return [r.id for r in self.rules]

    def counters(self) -> dict[str, int]:
        figures = dict(vars(self.stats))
        figures["non_numeric"] = sum(r.runner.non_numeric for r in self.rules)
        figures["expr_errors"] = self.env.expr_errors
        figures["active_alerts"] = len(self.alerts)
        return figures


_EMPTY = ReadingColumns([], [], [], [], [], [], [], [], [])
