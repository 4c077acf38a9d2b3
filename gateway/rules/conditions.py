"""Conditions compiled once from rule files into plain `(event, env) -> bool` checkers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from gateway.rules.actions import Event
from gateway.rules.expressions import compile_expression
from gateway.rules.schema import Condition, StateCondition, SunCondition, TimeCondition
from gateway.rules.sun import local_date, sun_times

__all__ = [  # compile_expression moved to expressions.py; still importable from here
    "UNKNOWN_STATES",
    "Check",
    "Env",
    "Latest",
    "compile_condition",
    "compile_conditions",
    "compile_expression",
    "normalize_expected",
    "normalize_state",
    "uses_sun",
]

logger = logging.getLogger(__name__)

UNKNOWN_STATES = frozenset(("unknown", "unavailable", "none", "null", ""))

# (event time, value, text, topic, tags JSON, event id) of a (device, metric)'s latest reading
Latest = tuple[float, float | None, str | None, str, str | None, str | None]


@dataclass(slots=True)
class Env:
    """What conditions may look at besides the event: latest states, the place and its clock."""

    latest: dict[tuple[str, str], Latest] = field(default_factory=dict)
    zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    latitude: float | None = None
    longitude: float | None = None
    expr_errors: int = 0


Check = Callable[[Event, Env], bool]


def normalize_state(value: float | None, text: str | None) -> str:
    """A reading as a comparable state: lower-cased text, or the number written compactly."""
    if text is not None:
        return text.strip().lower()
    if value is None:
        return ""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def normalize_expected(value: str | bool | float) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return normalize_state(float(value), None)
    return value.strip().lower()


def _state(spec: StateCondition) -> Check:
    key = (spec.device, spec.metric)
    expected = frozenset(normalize_expected(v) for v in spec.is_) if spec.is_ is not None else None
    above, below, max_age = spec.above, spec.below, spec.max_age

    def check(event: Event, env: Env) -> bool:
        latest = env.latest.get(key)
        if latest is None:
            return False
        t, value, text = latest[0], latest[1], latest[2]
        if max_age is not None and event.time - t > max_age:
            return False
        if expected is not None and normalize_state(value, text) not in expected:
            return False
        if above is not None and (value is None or not value > above):
            return False
        return not (below is not None and (value is None or not value < below))

    return check


def _seconds(clock: str) -> int:
    parts = [int(p) for p in clock.split(":")]
    return parts[0] * 3600 + parts[1] * 60 + (parts[2] if len(parts) > 2 else 0)


def _time(spec: TimeCondition) -> Check:
    after = _seconds(spec.after) if spec.after is not None else None
    before = _seconds(spec.before) if spec.before is not None else None
    days = (
        frozenset(("mon", "tue", "wed", "thu", "fri", "sat", "sun").index(d) for d in spec.weekdays)
        if spec.weekdays
        else None
    )

    def check(event: Event, env: Env) -> bool:
        local = datetime.fromtimestamp(event.time, env.zone)
        now = local.hour * 3600 + local.minute * 60 + local.second
        weekday = local.weekday()
        if after is not None and before is not None and after > before:
            # Spans midnight: 22:00-06:00. The weekday is the one the window started on.
            if now >= after:
                inside = True
            elif now < before:
                inside = True
                weekday = (weekday - 1) % 7
            else:
                inside = False
        else:
            inside = (after is None or now >= after) and (before is None or now < before)
        return inside and (days is None or weekday in days)

    return check


def _sun(spec: SunCondition) -> Check:
    def moment(event: str, day_times: tuple[float | None, float | None]) -> float | None:
        return day_times[0] if event == "sunrise" else day_times[1]

    def check(event: Event, env: Env) -> bool:
        assert env.latitude is not None and env.longitude is not None
        day = local_date(event.time, env.zone)
        times = sun_times(day, env.latitude, env.longitude)
        t = event.time
        after_ok = before_ok = True
        if spec.after is not None:
            start = moment(spec.after, times)
            after_ok = start is not None and t >= start + spec.after_offset
        if spec.before is not None:
            end = moment(spec.before, times)
            before_ok = end is not None and t < end + spec.before_offset
        if spec.after is not None and spec.before is not None:
            start = moment(spec.after, times)
            end = moment(spec.before, times)
            if (
                start is not None
                and end is not None
                and start + spec.after_offset > end + spec.before_offset
            ):
                return after_ok or before_ok  # after sunset, before sunrise: the night
        return after_ok and before_ok

    return check


def _expr(source: str) -> Check:
    program = compile_expression(source)
    names = set(program.variables())

    def check(event: Event, env: Env) -> bool:
        ctx: dict[str, Any] = {
            "value": event.value,
            "text": event.text,
            "device": event.device,
            "metric": event.metric,
            "topic": event.topic,
            "time": event.time,
        }
        if names & {"hour", "minute", "weekday"}:
            local = datetime.fromtimestamp(event.time, env.zone)
            ctx.update(hour=local.hour, minute=local.minute, weekday=local.isoweekday() % 7)
        if "tags" in names:
            import orjson

            ctx["tags"] = orjson.loads(event.tags) if event.tags else {}
        if "state" in names:
            ctx["state"] = {
                f"{d}/{m}": (v if v is not None else text)
                for (d, m), (_, v, text, *_rest) in env.latest.items()
            }
        try:
            return program.execute(ctx) is True
        except (ArithmeticError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            # ArithmeticError: `value / 0` with a device's reading of 0 must not stop the rules
            env.expr_errors += 1
            logger.debug("rule %s: expr %r failed: %s", event.rule_id, source, exc)
            return False

    return check


def compile_condition(cond: Condition) -> Check:
    if cond.all is not None:
        parts = [compile_condition(c) for c in cond.all]
        return lambda e, env: all(p(e, env) for p in parts)
    if cond.any is not None:
        parts = [compile_condition(c) for c in cond.any]
        return lambda e, env: any(p(e, env) for p in parts)
    if cond.not_ is not None:
        inner = compile_condition(cond.not_)
        return lambda e, env: not inner(e, env)
    if cond.state is not None:
        return _state(cond.state)
    if cond.time is not None:
        return _time(cond.time)
    if cond.sun is not None:
        return _sun(cond.sun)
    assert cond.expr is not None
    return _expr(cond.expr)


def compile_conditions(conds: list[Condition]) -> Check | None:
    if not conds:
        return None
    if len(conds) == 1:
        return compile_condition(conds[0])
    parts = [compile_condition(c) for c in conds]
    return lambda e, env: all(p(e, env) for p in parts)


def uses_sun(conds: list[Condition]) -> bool:
    for cond in conds:
        if cond.sun is not None:
            return True
        nested = cond.all or cond.any or ([cond.not_] if cond.not_ is not None else [])
        if uses_sun(nested):
            return True
    return False
