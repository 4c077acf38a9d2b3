"""The rule engine: committed readings and ticks in, actions out; pure, replayable, restorable.

Time is event time. The engine's clock is the latest event time or tick it has seen; its
watermark is the clock minus the allowed lateness. Readings older than the watermark are
counted as late and dropped; readings out of order but within the lateness are handed to the
triggers, which use them to break a pending `for` or fill a window but never to move the
current state backwards. Timers that depend on readings (`for`, silence, windows) run when the
watermark passes them; schedules and `delay` steps run on the clock.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fnmatch import translate
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from gateway.errors import RuleError
from gateway.rules.actions import (
    AlertChange,
    Command,
    Event,
    LogLine,
    Output,
    Template,
    WebhookCall,
)
from gateway.rules.conditions import Check, Env, Latest, compile_conditions, uses_sun
from gateway.rules.schema import (
    Action,
    LoadedRule,
    RateTrigger,
    Rule,
    ScheduleTrigger,
    Select,
    SilenceTrigger,
    StateTrigger,
    SunTrigger,
    ThresholdTrigger,
    WindowTrigger,
)
from gateway.rules.triggers import (
    Key,
    RateRunner,
    Runner,
    SilenceRunner,
    StateRunner,
    ThresholdRunner,
    TimeRunner,
    WindowRunner,
)
from gateway.topics import matcher

logger = logging.getLogger(__name__)

HISTORICAL_TAG = '"historical":"true"'  # the tag decoders put on backfilled readings

SNAPSHOT_VERSION = 1
_CACHE_LIMIT = 100_000

Handler = Callable[[Key, float, float | None, str | None], None]
Matcher = Callable[[str, str, str, str | None], bool]


@dataclass
class EngineStats:
    readings: int = 0
    evaluations: int = 0  # (reading, selecting rule) pairs evaluated
    late_dropped: int = 0  # older than the watermark: beyond the allowed lateness
    fired: int = 0
    primed: int = 0  # would have fired on a retained (known, not new) reading
    conditions_false: int = 0
    cooldown_suppressed: int = 0
    retrigger_ignored: int = 0
    queue_dropped: int = 0
    commands_refused: int = 0  # a filled-in topic would have reached another topic


def _names_matcher(names: list[str] | None) -> Callable[[str], bool] | None:
    if names is None:
        return None
    exact = {n for n in names if not any(c in n for c in "*?[")}
    globs = [re.compile(translate(n)) for n in names if n not in exact]
    if not globs:
        return exact.__contains__
    return lambda name: name in exact or any(g.match(name) for g in globs)


def _topic_matcher(pattern: str | None) -> Callable[[str], bool] | None:
    return None if pattern is None else matcher(pattern)


def compile_select(select: Select) -> Matcher:
    device = _names_matcher(select.device)
    metric = _names_matcher(select.metric)
    topic = _topic_matcher(select.topic)
    tags = dict(select.tags)

    def matches(d: str, m: str, t: str, tags_json: str | None) -> bool:
        if device is not None and not device(d):
            return False
        if metric is not None and not metric(m):
            return False
        if topic is not None and not topic(t):
            return False
        if tags:
            have = orjson.loads(tags_json) if tags_json else {}
            if any(str(have.get(k)) != v for k, v in tags.items()):
                return False
        return True

    return matches


def _known_keys(select: Select, by_metric: bool) -> list[Key]:
    """Devices (and metrics) named exactly, so silence can watch them before they speak."""
    if not select.device or any(any(c in d for c in "*?[") for d in select.device):
        return []
    if by_metric:
        if not select.metric or any(any(c in m for c in "*?[") for m in select.metric):
            return []
        return [(d, m) for d in select.device for m in select.metric]
    return [(d, "*") for d in select.device]


@dataclass(slots=True)
class _Step:
    kind: str
    spec: Any
    templates: tuple[Template | None, ...] = ()
    seconds: float = 0.0


def _compile_steps(actions: list[Action]) -> list[_Step]:
    steps = []
    for action in actions:
        if action.mqtt is not None:
            a = action.mqtt
            steps.append(_Step("mqtt", a, (Template(a.topic), Template(a.payload))))
        elif action.alert is not None:
            steps.append(_Step("alert", action.alert, (Template(action.alert.message),)))
        elif action.webhook is not None:
            w = action.webhook
            steps.append(_Step("webhook", w, (Template(w.body) if w.body is not None else None,)))
        elif action.log is not None:
            steps.append(_Step("log", action.log, (Template(action.log.message),)))
        else:
            assert action.delay is not None
            steps.append(_Step("delay", None, (), action.delay))
    return steps


@dataclass(slots=True)
class _Sequence:
    """An action sequence paused at a `delay`, and the events queued behind it (mode: queue)."""

    event: Event
    step: int
    due: float
    queue: list[Event] = field(default_factory=list)


class _Compiled:
    __slots__ = (
        "check",
        "clear_steps",
        "cooldown",
        "digest",
        "has_alert",
        "id",
        "index",
        "last_fire",
        "matches",
        "max_queued",
        "mode",
        "rule",
        "runner",
        "running",
        "source",
        "steps",
    )

    def __init__(self, index: int, loaded: LoadedRule) -> None:
        rule = loaded.rule
        self.index = index
        self.rule: Rule = rule
        self.id = rule.id
        self.source = loaded.source
        self.digest = hashlib.sha256(rule.model_dump_json(by_alias=True).encode()).hexdigest()[:16]
        self.matches = compile_select(rule.select)
        self.check: Check | None = compile_conditions(rule.conditions)
        self.steps = _compile_steps(rule.actions)
        self.clear_steps = _compile_steps(rule.on_clear)
        self.has_alert = any(s.kind == "alert" for s in self.steps)
        self.cooldown = rule.cooldown
        self.mode = rule.mode
        self.max_queued = rule.max_queued
        self.last_fire: dict[Key, float] = {}
        self.running: dict[Key, _Sequence] = {}
        self.runner: Runner


def _rule_error(loaded: LoadedRule, field_name: str, message: str) -> RuleError:
    return RuleError(f"{loaded.source}: rule {loaded.rule.id!r}: {field_name}: {message}")


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
        self._seq = 0
        self._wm_timers: list[tuple[float, int, Runner, Key, Any]] = []
        self._clock_timers: list[tuple[float, int, Runner | None, Key, Any]] = []
        self._out: list[Output] = []
        self._cache: dict[tuple[str, str, str, str | None], list[Handler]] = {}
        # (rule id, device, metric) -> [severity, message, raised at]
        self.alerts: dict[tuple[str, str, str], list[Any]] = {}
        self.rules: list[_Compiled] = []
        seen: set[str] = set()
        for loaded in rules:
            rule = loaded.rule
            if not rule.enabled:
                continue
            if rule.id in seen:
                raise _rule_error(loaded, "id", "defined twice")
            seen.add(rule.id)
            compiled = _Compiled(len(self.rules), loaded)
            compiled.runner = self._runner(compiled, loaded)
            if uses_sun(rule.conditions) and latitude is None:
                raise _rule_error(
                    loaded,
                    "conditions",
                    "`sun` needs latitude and longitude in the gateway config's `location:`",
                )
            self.rules.append(compiled)

    def _runner(self, compiled: _Compiled, loaded: LoadedRule) -> Runner:
        spec = compiled.rule.trigger
        i = compiled.index
        if isinstance(spec, ThresholdTrigger):
            return ThresholdRunner(i, self, spec)
        if isinstance(spec, StateTrigger):
            return StateRunner(i, self, spec)
        if isinstance(spec, RateTrigger):
            return RateRunner(i, self, spec)
        if isinstance(spec, SilenceTrigger):
            by_metric = compiled.rule.select.metric is not None
            known = _known_keys(compiled.rule.select, by_metric)
            return SilenceRunner(i, self, spec, by_metric, known)
        if isinstance(spec, WindowTrigger):
            return WindowRunner(i, self, spec)
        if isinstance(spec, SunTrigger) and self.env.latitude is None:
            raise _rule_error(
                loaded,
                "trigger",
                "a `sun` trigger needs latitude and longitude in the gateway config's `location:`",
            )
        assert isinstance(spec, ScheduleTrigger | SunTrigger)
        lat, lon = self.env.latitude, self.env.longitude
        return TimeRunner(i, self, spec, self.env.zone, lat, lon, self.misfire_grace)

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
        out, self._out = self._out, []
        return out

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
        wm_timers = self._wm_timers
        clock_timers = self._clock_timers
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
        wm_timers, clock_timers = self._wm_timers, self._clock_timers
        while True:
            watermark = self.clock - self.lateness
            wm_due = wm_timers[0][0] if wm_timers and wm_timers[0][0] <= watermark else None
            clock_due = (
                clock_timers[0][0] if clock_timers and clock_timers[0][0] <= self.clock else None
            )
            if wm_due is None and clock_due is None:
                return
            if clock_due is None or (wm_due is not None and wm_due <= clock_due):
                due, _, runner, key, arg = heapq.heappop(wm_timers)
                runner.on_timer(key, due, arg)
            else:
                due, _, maybe_runner, key, arg = heapq.heappop(clock_timers)
                if maybe_runner is not None:
                    maybe_runner.on_timer(key, due, arg)
                else:
                    self._resume(key, due, arg)

    # -- Host (called by the triggers) ------------------------------------------------------
    def at_watermark(self, due: float, runner: Runner, key: Key, arg: Any) -> None:
        self._seq += 1
        heapq.heappush(self._wm_timers, (due, self._seq, runner, key, arg))

    def at_clock(self, due: float, runner: Runner, key: Key, arg: Any) -> None:
        self._seq += 1
        heapq.heappush(self._clock_timers, (due, self._seq, runner, key, arg))

    def _event(
        self, r: _Compiled, key: Key, t: float, value: float | None, text: str | None
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
        if r.cooldown:
            last = r.last_fire.get(key)
            if last is not None and t - last < r.cooldown:
                stats.cooldown_suppressed += 1
                return False
        running = r.running.get(key)
        if running is not None:
            if r.mode == "ignore":
                stats.retrigger_ignored += 1
                return False
            if r.mode == "queue":
                if len(running.queue) >= r.max_queued:
                    stats.queue_dropped += 1
                    return False
                running.queue.append(event)
                r.last_fire[key] = t
                stats.fired += 1
                return True
            del r.running[key]  # restart: the paused sequence's timer finds it gone
        r.last_fire[key] = t
        stats.fired += 1
        self._run_steps(r, key, event, 0, t, [])
        return True

    def clear(self, rule: int, key: Key, t: float, value: float | None, text: str | None) -> None:
        r = self.rules[rule]
        event = self._event(r, key, t, value, text)
        alert = self.alerts.pop((r.id, key[0], key[1]), None)
        if alert is not None:
            severity, message = alert[0], alert[1]
            self._out.append(
                AlertChange(
                    r.id,
                    key[0],
                    key[1],
                    t,
                    severity,
                    "cleared",
                    message,
                    value,
                    event.event_id,
                )
            )
        for step in r.clear_steps:
            self._emit(r, step, event, t)

    # -- actions --------------------------------------------------------------------------
    def _run_steps(
        self, r: _Compiled, key: Key, event: Event, start: int, at: float, queue: list[Event]
    ) -> None:
        while True:
            steps = r.steps
            for index in range(start, len(steps)):
                step = steps[index]
                if step.kind == "delay":
                    sequence = _Sequence(event, index + 1, at + step.seconds, queue)
                    r.running[key] = sequence
                    self._seq += 1
                    heapq.heappush(
                        self._clock_timers,
                        (sequence.due, self._seq, None, key, (r.index, sequence)),
                    )
                    return
                self._emit(r, step, event, at)
            r.running.pop(key, None)
            if not queue:
                return
            event = queue.pop(0)
            start = 0
            at = max(at, event.time)

    def _resume(self, key: Key, due: float, arg: Any) -> None:
        rule_index, sequence = arg
        r = self.rules[rule_index]
        if r.running.get(key) is not sequence:
            return  # restarted or replaced since it paused
        self._run_steps(r, key, sequence.event, sequence.step, due, sequence.queue)

    def _emit(self, r: _Compiled, step: _Step, event: Event, at: float) -> None:
        kind = step.kind
        device = event.device
        if kind == "mqtt":
            spec = step.spec
            topic, payload = step.templates
            assert topic is not None and payload is not None
            try:
                rendered = topic.render_topic(event)
            except ValueError as exc:
                self.stats.commands_refused += 1
                logger.warning("rule %s, device %r: %s", r.id, device, exc)
                return
            self._out.append(
                Command(
                    r.id,
                    device,
                    at,
                    rendered,
                    payload.render(event),
                    spec.qos,
                    spec.retain,
                )
            )
        elif kind == "alert":
            key = (r.id, device, event.metric)
            if key in self.alerts:
                return  # already raised and not cleared: no duplicate alert
            template = step.templates[0]
            assert template is not None
            message = template.render(event)
            self.alerts[key] = [step.spec.severity, message, at]
            self._out.append(
                AlertChange(
                    r.id,
                    device,
                    event.metric,
                    at,
                    step.spec.severity,
                    "raised",
                    message,
                    event.value,
                    event.event_id,
                )
            )
        elif kind == "webhook":
            spec = step.spec
            template = step.templates[0]
            body = (
                template.render(event)
                if template is not None
                else orjson.dumps(event.as_dict()).decode()
            )
            self._out.append(
                WebhookCall(
                    r.id, device, at, spec.url, spec.method, dict(spec.headers), body, spec.timeout
                )
            )
        elif kind == "log":
            template = step.templates[0]
            assert template is not None
            self._out.append(LogLine(r.id, device, at, step.spec.level, template.render(event)))

    # -- state ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Everything needed to continue after a restart, as JSON-able data."""
        rules: dict[str, Any] = {}
        for r in self.rules:
            rules[r.id] = {
                "digest": r.digest,
                "trigger": r.runner.snapshot(),
                "last_fire": [[k[0], k[1], t] for k, t in r.last_fire.items()],
                "running": [
                    [
                        k[0],
                        k[1],
                        s.step,
                        s.due,
                        s.event.as_dict(),
                        [e.as_dict() for e in s.queue],
                    ]
                    for k, s in r.running.items()
                ],
            }
        return {
            "version": SNAPSHOT_VERSION,
            "clock": self.clock if self.clock != float("-inf") else None,
            "last_reading_id": self.last_reading_id,
            "latest": [[k[0], k[1], *v] for k, v in self.env.latest.items()],
            "alerts": [[k[0], k[1], k[2], *v] for k, v in self.alerts.items()],
            "rules": rules,
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Continue from a snapshot. Rules whose definition changed start afresh; their open
        alerts are cleared (reported on the next call) rather than left dangling."""
        if snapshot.get("version") != SNAPSHOT_VERSION:
            logger.warning("rules state has version %r; starting afresh", snapshot.get("version"))
            return
        clock = snapshot.get("clock")
        if clock is not None:
            self.clock = float(clock)
        self.last_reading_id = int(snapshot.get("last_reading_id") or 0)
        for d, m, t, v, x, topic, tags, eid in snapshot.get("latest", []):
            self.env.latest[(d, m)] = (t, v, x, topic, tags, eid)
        by_id = {r.id: r for r in self.rules}
        kept: set[str] = set()
        for rule_id, data in snapshot.get("rules", {}).items():
            r = by_id.get(rule_id)
            if r is None or r.digest != data.get("digest"):
                continue
            kept.add(rule_id)
            r.runner.restore(data["trigger"])
            r.last_fire = {(d, m): t for d, m, t in data["last_fire"]}
            for d, m, step, due, event, queue in data["running"]:
                sequence = _Sequence(
                    Event.from_dict(event), step, due, [Event.from_dict(e) for e in queue]
                )
                r.running[(d, m)] = sequence
                self._seq += 1
                heapq.heappush(
                    self._clock_timers, (due, self._seq, None, (d, m), (r.index, sequence))
                )
        for rule_id, d, m, severity, message, at in snapshot.get("alerts", []):
            if rule_id in kept:
                self.alerts[(rule_id, d, m)] = [severity, message, at]
            else:
                self._out.append(
                    AlertChange(
                        rule_id,
                        d,
                        m,
                        self.clock,
                        severity,
                        "cleared",
                        f"{message} (rule changed or removed)",
                        None,
                        None,
                    )
                )
        if clock is not None:
            self._primed = True
            for r in self.rules:
                if r.id not in kept:
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
