"""The rule engine: committed readings and ticks in, actions out; pure, replayable, restorable.

Time is event time. The engine's clock is the latest event time or tick it has seen; its
watermark is the clock minus the allowed lateness. Readings older than the watermark are
counted as late and dropped; readings out of order but within the lateness are handed to the
triggers, which use them to break a pending `for` or fill a window but never to move the
current state backwards. Timers that depend on readings (`for`, silence, windows) run when the
watermark passes them; schedules and `delay` steps run on the clock.

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
import pyarrow.compute as pc

from gateway.errors import RuleError
from gateway.rules.actions import Event, Output
from gateway.rules.compile import CompiledRule, compile_rules
from gateway.rules.conditions import Env, Latest
from gateway.rules.schema import LoadedRule
from gateway.rules.snapshot import SNAPSHOT_VERSION, restore_snapshot, take_snapshot
from gateway.rules.stats import EngineStats
from gateway.rules.steps import ActionRunner, AlertKey
from gateway.rules.timers import Timers
from gateway.rules.triggers.base import Key, Runner

__all__ = ["SNAPSHOT_VERSION", "EngineStats", "RuleEngine"]

HISTORICAL_TAG = '"historical":"true"'  # the tag decoders put on backfilled readings

_CACHE_LIMIT = 100_000

Handler = Callable[[Key, float, float | None, str | None], None]


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
        self.clock = float("-inf")
        self.last_reading_id = 0  # the highest buffer id processed (restart replays after it)
        self._primed = False
        self._priming = False
        self.timers = Timers()
        self.actions = ActionRunner(self.stats, self.timers)
        self._cache: dict[tuple[str, str, str, str | None], list[Handler]] = {}
        self.rules: list[CompiledRule] = compile_rules(rules, self, self.env, misfire_grace)

    @property
    def alerts(self) -> dict[AlertKey, list[Any]]:
        """(rule id, device, metric) -> [severity, message, raised at]: raised, not cleared."""
        return self.actions.alerts

    # -- input ----------------------------------------------------------------------------
    def process(
        self, readings: pa.Table, now: float | None = None, *, prime: bool = False
    ) -> list[Output]:
        """Evaluate a batch (READINGS_SCHEMA; `id`/`event_id` may be missing before commit),
        then advance to `now` if given.

        `prime`: the readings are known state, not news (an MQTT broker's retained messages on
        subscribing): they update triggers and latest states but fire nothing, so a value
        already past a threshold is not taken for a crossing."""
        n = readings.num_rows
        if n:
            self._priming = prime
            try:
                self._evaluate(readings, n)
            finally:
                self._priming = False
        if now is not None:
            self._advance(now)
        return self.actions.take()

    def tick(self, now: float) -> list[Output]:
        """Advance time with no readings: runs due `for`, silence, window and schedule timers."""
        return self.process(_EMPTY, now)

    def _evaluate(self, readings: pa.Table, n: int) -> None:
        micros = pc.cast(readings.column("event_time"), pa.int64())
        times = [m / 1e6 for m in micros.to_pylist()]
        devices = readings.column("device").to_pylist()
        metrics = readings.column("metric").to_pylist()
        values = readings.column("value").to_pylist()
        texts = readings.column("text").to_pylist()
        topics = readings.column("topic").to_pylist()
        tags = readings.column("tags").to_pylist()
        # Readings evaluated as they arrive have no ids yet (the buffer assigns them on commit).
        committed = "event_id" in readings.column_names
        ids = readings.column("event_id").to_pylist() if committed else [None] * n
        order: Sequence[int] = range(n)
        if any(times[i] > times[i + 1] for i in range(n - 1)):
            order = sorted(range(n), key=times.__getitem__)
        # Backfilled history (Sparkplug `is_historical`) is stored but is not news for live rules.
        if any(tag is not None and HISTORICAL_TAG in tag for tag in tags):
            order = [i for i in order if not (tags[i] and HISTORICAL_TAG in tags[i])]
        if not self._primed and order:
            self._prime(times[order[0]])
        lateness = self.lateness
        clock = self.clock
        watermark = clock - lateness
        latest = self.env.latest
        cache = self._cache
        wm_timers = self.timers.by_watermark
        clock_timers = self.timers.by_clock
        late = evaluations = 0
        for i in order:
            t = times[i]
            if t < watermark:
                late += 1
                continue
            if t > clock:
                clock = self.clock = t
                watermark = t - lateness
                if (wm_timers and wm_timers[0][0] <= watermark) or (
                    clock_timers and clock_timers[0][0] <= clock
                ):
                    self._run_timers()
            device = devices[i]
            metric = metrics[i]
            key = (device, metric)
            value = values[i]
            text = texts[i]
            previous = latest.get(key)
            if previous is None or t >= previous[0]:
                latest[key] = (t, value, text, topics[i], tags[i], ids[i])
            handlers = cache.get((device, metric, topics[i], tags[i]))
            if handlers is None:
                handlers = self._resolve(device, metric, topics[i], tags[i])
            for handler in handlers:
                handler(key, t, value, text)
            evaluations += len(handlers)
        if committed:
            last_id = pc.max(readings.column("id")).as_py()
            if last_id is not None and last_id > self.last_reading_id:
                self.last_reading_id = int(last_id)
        stats = self.stats
        stats.readings += n
        stats.late_dropped += late
        stats.evaluations += evaluations

    def _resolve(self, device: str, metric: str, topic: str, tags: str | None) -> list[Handler]:
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        handlers: list[Handler] = [
            r.runner.on_reading for r in self.rules if r.matches(device, metric, topic, tags)
        ]
        self._cache[(device, metric, topic, tags)] = handlers
        return handlers

    def _prime(self, clock: float) -> None:
        self._primed = True
        self.clock = max(self.clock, clock)
        for r in self.rules:
            r.runner.prime(self.clock)

    def _advance(self, now: float) -> None:
        if not self._primed:
            self._prime(now)
        self.clock = max(self.clock, now)
        self._run_timers()

    def _run_timers(self) -> None:
        self.timers.run(self.clock, self.lateness)

    # -- Host (called by the triggers) ------------------------------------------------------
    def at_watermark(self, due: float, runner: Runner, key: Key, arg: Any) -> None:
        self.timers.at_watermark(due, runner, key, arg)

    def at_clock(self, due: float, runner: Runner, key: Key, arg: Any) -> None:
        self.timers.at_clock(due, runner, key, arg)

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


def _empty_table() -> pa.Table:
    from gateway.model import READINGS_SCHEMA

    return READINGS_SCHEMA.empty_table()


_EMPTY = _empty_table()
