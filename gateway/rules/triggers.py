"""Triggers: one small state machine per trigger type, keeping separate state per device/metric.

A runner gets readings already in event-time order per key (late ones within the allowed
lateness are flagged by `t < last_t`), asks its host to arm timers, and calls `host.fire` /
`host.clear` on transitions. It never reads a clock: time arrives with readings and timers.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from gateway.rules.conditions import UNKNOWN_STATES, normalize_expected, normalize_state
from gateway.rules.schedule import next_cron_time, parse_cron
from gateway.rules.schema import (
    Level,
    RateTrigger,
    ScheduleTrigger,
    SilenceTrigger,
    StateTrigger,
    SunTrigger,
    ThresholdTrigger,
    WindowTrigger,
)
from gateway.rules.sun import next_sun_event

Key = tuple[str, str]  # (device, metric); ("*", "*") for a group, ("", "") for time triggers
Predicate = Callable[[float], bool]

IDLE, PENDING, ACTIVE = 0, 1, 2  # armed / crossing seen, waiting out `for` / fired


class Host(Protocol):
    """What a runner may ask of the engine."""

    clock: float  # the engine's time: the latest event time or tick seen

    def fire(self, rule: int, key: Key, t: float, value: float | None, text: str | None) -> bool:
        """Run the rule's actions if conditions and cooldown allow; True when they ran."""
        ...

    def clear(
        self, rule: int, key: Key, t: float, value: float | None, text: str | None
    ) -> None: ...

    def at_watermark(self, due: float, runner: Runner, key: Key, arg: Any) -> None:
        """Call `runner.on_timer` once the watermark (clock minus allowed lateness) reaches due."""
        ...

    def at_clock(self, due: float, runner: Runner, key: Key, arg: Any) -> None:
        """Call `runner.on_timer` once the clock reaches due (schedules)."""
        ...


def level_predicates(level: Level, hysteresis: float = 0.0) -> tuple[Predicate, Predicate]:
    """(on, off): strictly past the level by the margin / strictly back by the margin.

    Without hysteresis `off` is simply "not on"; with it, values inside the band change nothing.
    """
    h = hysteresis
    if level.above is not None:
        x = level.above
        if not h:
            return (lambda v: v > x), (lambda v: v <= x)
        return (lambda v: v > x + h), (lambda v: v < x - h)
    if level.below is not None:
        x = level.below
        if not h:
            return (lambda v: v < x), (lambda v: v >= x)
        return (lambda v: v < x - h), (lambda v: v > x + h)
    if level.outside is not None:
        lo, hi = level.outside
        if not h:
            return (lambda v: v < lo or v > hi), (lambda v: lo <= v <= hi)
        return (lambda v: v < lo - h or v > hi + h), (lambda v: lo + h < v < hi - h)
    assert level.inside is not None
    lo, hi = level.inside
    if not h:
        return (lambda v: lo < v < hi), (lambda v: v <= lo or v >= hi)
    return (lambda v: lo + h < v < hi - h), (lambda v: v < lo - h or v > hi + h)


def _key(data: list[Any]) -> Key:
    return (str(data[0]), str(data[1]))


class Runner:
    """Base of the trigger runners."""

    kind = "?"

    def __init__(self, rule: int, host: Host) -> None:
        self.rule = rule
        self.host = host
        self.non_numeric = 0

    def on_reading(self, key: Key, t: float, value: float | None, text: str | None) -> None:
        """A selected reading; `key` is (device, metric)."""

    def on_timer(self, key: Key, due: float, arg: Any) -> None:
        """A timer armed through the host ran out."""

    def prime(self, clock: float) -> None:
        """Called once, the first time the engine knows what time it is."""

    def snapshot(self) -> list[Any]:
        return []

    def restore(self, data: list[Any]) -> None:
        """Load a snapshot and re-arm its timers through the host."""


class _Crossing:
    """Per-key state of a level crossing: the armed flag (as phase), `for` and the open alert."""

    __slots__ = ("deadline", "last_in", "last_t", "open", "phase", "ref", "since", "value")

    def __init__(self) -> None:
        self.phase = IDLE
        self.since = 0.0
        self.deadline = 0.0
        self.last_t = float("-inf")
        self.ref: float | None = None  # deadband reference
        self.last_in: float | None = None
        self.open = False  # fired (actions ran) and not yet cleared
        self.value: float | None = None  # the value that started the crossing

    def dump(self) -> list[Any]:
        last_t = self.last_t if self.last_t != float("-inf") else None
        return [
            self.phase,
            self.since,
            self.deadline,
            last_t,
            self.ref,
            self.last_in,
            self.open,
            self.value,
        ]

    @classmethod
    def load(cls, data: list[Any]) -> _Crossing:
        st = cls()
        st.phase, st.since, st.deadline, last_t, st.ref, st.last_in, st.open, st.value = data
        st.last_t = float("-inf") if last_t is None else last_t
        return st


class ThresholdRunner(Runner):
    """Fires when a value crosses into the level (armed flag per key), optionally after `for`."""

    kind = "threshold"

    def __init__(self, rule: int, host: Host, spec: ThresholdTrigger) -> None:
        super().__init__(rule, host)
        self.on, self.off = level_predicates(spec, spec.hysteresis)
        self.clear_when = level_predicates(spec.clear)[0] if spec.clear is not None else None
        self.hold = spec.for_
        self.deadband = spec.deadband
        self.states: dict[Key, _Crossing] = {}

    def on_reading(self, key: Key, t: float, value: float | None, text: str | None) -> None:
        st = self.states.get(key)
        if st is None:
            st = self.states[key] = _Crossing()
        if value is None:
            if text is None or text.strip().lower() in UNKNOWN_STATES:
                if t >= st.last_t:  # unknown/unavailable re-arms, as Home Assistant does
                    st.last_t = t
                    st.phase = IDLE
            else:
                self.non_numeric += 1
            return
        if t < st.last_t:
            # Out of order (within the allowed lateness): it may prove a pending `for` broken,
            # but it never moves the current state backwards.
            if st.phase == PENDING and st.since <= t < st.deadline and self.off(value):
                st.phase = IDLE
            return
        st.last_t = t
        band = self.deadband
        if band is not None:
            ref = st.ref if band.against == "last_output" else st.last_in
            st.last_in = value
            if ref is not None:
                gap = abs(ref) * band.gap / 100.0 if band.percent else band.gap
                if abs(value - ref) < gap:
                    return
            st.ref = value
        phase = st.phase
        if phase == IDLE:
            if self.on(value):
                if self.hold:
                    st.phase = PENDING
                    st.since = t
                    st.deadline = t + self.hold
                    st.value = value
                    self.host.at_watermark(st.deadline, self, key, None)
                else:
                    st.phase = ACTIVE
                    st.value = value
                    if self.host.fire(self.rule, key, t, value, text):
                        st.open = True
        elif phase == PENDING:
            if self.off(value):  # the first reading back across cancels the `for`
                st.phase = IDLE
        elif self.off(value):
            st.phase = IDLE
        if st.open:
            done = self.clear_when(value) if self.clear_when is not None else self.off(value)
            if done:
                st.open = False
                self.host.clear(self.rule, key, t, value, text)

    def on_timer(self, key: Key, due: float, arg: Any) -> None:
        st = self.states.get(key)
        if st is None or st.phase != PENDING or st.deadline != due:
            return  # cancelled or re-armed since
        st.phase = ACTIVE
        if self.host.fire(self.rule, key, due, st.value, None):
            st.open = True

    def snapshot(self) -> list[Any]:
        return [[k[0], k[1], st.dump()] for k, st in self.states.items()]

    def restore(self, data: list[Any]) -> None:
        for item in data:
            key = _key(item)
            st = self.states[key] = _Crossing.load(item[2])
            if st.phase == PENDING:
                self.host.at_watermark(st.deadline, self, key, None)


class _StateMachine:
    __slots__ = ("deadline", "last_t", "open", "phase", "state")

    def __init__(self) -> None:
        self.state: str | None = None
        self.last_t = float("-inf")
        self.phase = IDLE
        self.deadline = 0.0
        self.open = False


class StateRunner(Runner):
    """Fires when the state changes to (and/or from) given values, optionally held for `for`."""

    kind = "state"

    def __init__(self, rule: int, host: Host, spec: StateTrigger) -> None:
        super().__init__(rule, host)
        self.to = frozenset(normalize_expected(v) for v in spec.to) if spec.to else None
        self.from_ = frozenset(normalize_expected(v) for v in spec.from_) if spec.from_ else None
        self.hold = spec.for_
        self.states: dict[Key, _StateMachine] = {}

    def on_reading(self, key: Key, t: float, value: float | None, text: str | None) -> None:
        st = self.states.get(key)
        if st is None:
            st = self.states[key] = _StateMachine()
        state = normalize_state(value, text)
        to = self.to
        if t < st.last_t:
            pending = st.phase == PENDING and st.deadline - self.hold <= t < st.deadline
            if pending and to is not None and state not in to:
                st.phase = IDLE
            return
        st.last_t = t
        previous, st.state = st.state, state
        if state == previous:
            return  # a device republishing its state is not a change
        matches = (to is None or state in to) and (
            self.from_ is None or (previous is not None and previous in self.from_)
        )
        if matches:
            if self.hold:
                st.phase = PENDING
                st.deadline = t + self.hold
                self.host.at_watermark(st.deadline, self, key, None)
            else:
                st.phase = ACTIVE
                if self.host.fire(self.rule, key, t, value, text):
                    st.open = True
                return
        else:
            st.phase = IDLE
        if st.open and not matches:
            st.open = False
            self.host.clear(self.rule, key, t, value, text)

    def on_timer(self, key: Key, due: float, arg: Any) -> None:
        st = self.states.get(key)
        if st is None or st.phase != PENDING or st.deadline != due:
            return
        st.phase = ACTIVE
        value = None
        if self.host.fire(self.rule, key, due, value, st.state):
            st.open = True

    def snapshot(self) -> list[Any]:
        return [
            [
                k[0],
                k[1],
                [
                    st.state,
                    st.last_t if st.last_t != float("-inf") else None,
                    st.phase,
                    st.deadline,
                    st.open,
                ],
            ]
            for k, st in self.states.items()
        ]

    def restore(self, data: list[Any]) -> None:
        for item in data:
            key = _key(item)
            st = self.states[key] = _StateMachine()
            st.state, last_t, st.phase, st.deadline, st.open = item[2]
            st.last_t = float("-inf") if last_t is None else last_t
            if st.phase == PENDING:
                self.host.at_watermark(st.deadline, self, key, None)


class _Series:
    """Readings of one key kept for a window, plus the crossing state of what is computed."""

    __slots__ = ("points", "st")

    def __init__(self) -> None:
        self.points: list[tuple[float, float]] = []
        self.st = _Crossing()


def _cross(
    runner: Runner, on: Predicate, off: Predicate, key: Key, st: _Crossing, t: float, x: float
) -> None:
    """Armed crossing on a derived value (rate, window aggregate); no `for`."""
    if st.phase == IDLE:
        if on(x):
            st.phase = ACTIVE
            st.value = x
            if runner.host.fire(runner.rule, key, t, x, None):
                st.open = True
    elif off(x):
        st.phase = IDLE
        if st.open:
            st.open = False
            runner.host.clear(runner.rule, key, t, x, None)


class RateRunner(Runner):
    """Change per `per` over the trailing `window`, compared with a level."""

    kind = "rate"

    def __init__(self, rule: int, host: Host, spec: RateTrigger) -> None:
        super().__init__(rule, host)
        self.on, self.off = level_predicates(spec, spec.hysteresis)
        self.window = spec.window
        self.per = spec.per
        self.series: dict[Key, _Series] = {}

    def on_reading(self, key: Key, t: float, value: float | None, text: str | None) -> None:
        if value is None:
            self.non_numeric += 1
            return
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = _Series()
        points = series.points
        if points and t < points[-1][0]:
            bisect.insort(points, (t, value))
            return
        points.append((t, value))
        horizon = t - self.window
        drop = 0
        while drop < len(points) and points[drop][0] < horizon:
            drop += 1
        if drop:
            del points[:drop]
        if len(points) < 2 or points[-1][0] <= points[0][0]:
            return
        (t0, v0), (t1, v1) = points[0], points[-1]
        rate = (v1 - v0) / (t1 - t0) * self.per
        _cross(self, self.on, self.off, key, series.st, t, rate)

    def snapshot(self) -> list[Any]:
        return [[k[0], k[1], s.points, s.st.dump()] for k, s in self.series.items()]

    def restore(self, data: list[Any]) -> None:
        for item in data:
            s = self.series[_key(item)] = _Series()
            s.points = [(float(a), float(b)) for a, b in item[2]]
            s.st = _Crossing.load(item[3])


class SilenceRunner(Runner):
    """Fires when a key sends nothing for `for`; clears on the next reading (recovery).

    Devices named exactly in `select` (no wildcards) are watched from the engine's first tick,
    so a device that never reports is noticed too.
    """

    kind = "silence"

    def __init__(
        self, rule: int, host: Host, spec: SilenceTrigger, by_metric: bool, known: list[Key]
    ) -> None:
        super().__init__(rule, host)
        self.quiet = spec.for_
        self.by_metric = by_metric
        self.known = known
        # key -> [last_seen, armed timer due or None, silent]
        self.seen: dict[Key, list[Any]] = {}

    def _key_of(self, key: Key) -> Key:
        return key if self.by_metric else (key[0], "*")

    def on_reading(self, key: Key, t: float, value: float | None, text: str | None) -> None:
        k = key if self.by_metric else (key[0], "*")
        entry = self.seen.get(k)
        if entry is None:
            entry = self.seen[k] = [t, None, False]
        elif t > entry[0]:
            entry[0] = t
        if entry[2]:
            entry[2] = False
            self.host.clear(self.rule, k, t, value, text)
        if entry[1] is None:
            due = entry[0] + self.quiet
            entry[1] = due
            self.host.at_watermark(due, self, k, None)

    def on_timer(self, key: Key, due: float, arg: Any) -> None:
        entry = self.seen.get(key)
        if entry is None or entry[1] != due:
            return
        deadline = entry[0] + self.quiet
        if deadline > due:  # heard from it meanwhile: wait again from the last reading
            entry[1] = deadline
            self.host.at_watermark(deadline, self, key, None)
            return
        entry[1] = None
        if not entry[2]:
            entry[2] = True
            self.host.fire(self.rule, key, due, None, None)

    def prime(self, clock: float) -> None:
        for key in self.known:
            if key not in self.seen:
                self.seen[key] = [clock, clock + self.quiet, False]
                self.host.at_watermark(clock + self.quiet, self, key, None)

    def snapshot(self) -> list[Any]:
        return [[k[0], k[1], e] for k, e in self.seen.items()]

    def restore(self, data: list[Any]) -> None:
        for item in data:
            key = _key(item)
            entry = self.seen[key] = list(item[2])
            if entry[1] is not None:
                self.host.at_watermark(entry[1], self, key, None)


_AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "avg": lambda xs: sum(xs) / len(xs),
    "min": min,
    "max": max,
    "sum": sum,
    "count": lambda xs: float(len(xs)),
}


class WindowRunner(Runner):
    """Aggregates over tumbling [k*size, (k+1)*size), hopping [k*hop, k*hop+size) or sliding
    (t-size, t] windows, per key or across the group, and fires when the aggregate crosses."""

    kind = "window"

    def __init__(self, rule: int, host: Host, spec: WindowTrigger) -> None:
        super().__init__(rule, host)
        self.on, self.off = level_predicates(spec, spec.hysteresis)
        self.kind_ = spec.kind
        self.size = spec.size
        self.hop = spec.hop if spec.hop is not None else spec.size
        self.agg = _AGGREGATES[spec.agg]
        self.counting = spec.agg == "count"
        self.group = spec.group == "all"
        # key -> window start -> values (tumbling/hopping); key -> series (sliding, crossing)
        self.open: dict[Key, dict[float, list[float]]] = {}
        self.series: dict[Key, _Series] = {}

    def on_reading(self, key: Key, t: float, value: float | None, text: str | None) -> None:
        if value is None:
            if not self.counting:
                self.non_numeric += 1
                return
            value = 0.0
        if self.group:
            key = ("*", "*")
        if self.kind_ == "sliding":
            self._slide(key, t, value)
            return
        windows = self.open.get(key)
        if windows is None:
            windows = self.open[key] = {}
        hop, size = self.hop, self.size
        k = int(t // hop)
        start = k * hop
        while start > t - size:
            values = windows.get(start)
            if values is None:
                values = windows[start] = []
                self.host.at_watermark(start + size, self, key, start)
            values.append(value)
            k -= 1
            start = k * hop

    def _slide(self, key: Key, t: float, value: float) -> None:
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = _Series()
        points = series.points
        if points and t < points[-1][0]:
            bisect.insort(points, (t, value))
            return
        points.append((t, value))
        horizon = t - self.size
        drop = 0
        while drop < len(points) and points[drop][0] <= horizon:
            drop += 1
        if drop:
            del points[:drop]
        result = self.agg([v for _, v in points])
        _cross(self, self.on, self.off, key, series.st, t, result)

    def on_timer(self, key: Key, due: float, arg: Any) -> None:
        windows = self.open.get(key)
        if windows is None or arg not in windows:
            return
        values = windows.pop(arg)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = _Series()
        _cross(self, self.on, self.off, key, series.st, due, self.agg(values))

    def snapshot(self) -> list[Any]:
        keys = set(self.open) | set(self.series)
        out = []
        for k in keys:
            windows = self.open.get(k, {})
            s = self.series.get(k)
            out.append(
                [
                    k[0],
                    k[1],
                    [[start, vals] for start, vals in windows.items()],
                    s.points if s else [],
                    s.st.dump() if s else None,
                ]
            )
        return out

    def restore(self, data: list[Any]) -> None:
        for item in data:
            key = _key(item)
            if item[2]:
                windows = self.open[key] = {}
                for start, vals in item[2]:
                    windows[float(start)] = [float(v) for v in vals]
                    self.host.at_watermark(float(start) + self.size, self, key, float(start))
            if item[4] is not None:
                s = self.series[key] = _Series()
                s.points = [(float(a), float(b)) for a, b in item[3]]
                s.st = _Crossing.load(item[4])


TIME_KEY: Key = ("", "")


class TimeRunner(Runner):
    """Cron schedules and sunrise/sunset (+offset), in the gateway's time zone."""

    kind = "time"

    def __init__(
        self,
        rule: int,
        host: Host,
        spec: ScheduleTrigger | SunTrigger,
        zone: ZoneInfo,
        latitude: float | None,
        longitude: float | None,
        misfire_grace: float,
    ) -> None:
        super().__init__(rule, host)
        self.zone = zone
        self.grace = misfire_grace
        if isinstance(spec, ScheduleTrigger):
            cron = parse_cron(spec.cron)
            self.next_after: Callable[[float], float | None] = lambda t: next_cron_time(
                cron, t, zone
            )
        else:
            assert latitude is not None and longitude is not None
            event, offset = spec.event, spec.offset
            self.next_after = lambda t: next_sun_event(t, event, offset, latitude, longitude, zone)
        self.due: float | None = None
        self.missed = 0
        self.restored = False  # the armed time came from a snapshot (the gateway was down)

    def _arm(self, after: float) -> None:
        self.due = self.next_after(after)
        if self.due is not None:
            self.host.at_clock(self.due, self, TIME_KEY, None)

    def prime(self, clock: float) -> None:
        if self.due is None:
            self._arm(clock)

    def on_timer(self, key: Key, due: float, arg: Any) -> None:
        if due != self.due:
            return
        clock = self.host.clock
        if self.restored and clock - due > self.grace:
            # Missed while the gateway was down: do not fire hours late; go to the next one.
            self.missed += 1
            self.restored = False
            self._arm(clock)
            return
        self.restored = False
        self._arm(due)
        self.host.fire(self.rule, TIME_KEY, due, None, None)

    def snapshot(self) -> list[Any]:
        return [self.due]

    def restore(self, data: list[Any]) -> None:
        if data and data[0] is not None:
            self.due = float(data[0])
            self.restored = True
            self.host.at_clock(self.due, self, TIME_KEY, None)
