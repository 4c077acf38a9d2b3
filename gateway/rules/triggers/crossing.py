"""Crossing a numeric level (threshold, rate, window): the level's predicates, the per-key
state of a crossing, and the armed crossing of a derived value (a rate, a window aggregate).

`Crossing.dump()` is part of the saved state of all three trigger types; its layout is fixed.
"""

from __future__ import annotations

from typing import Any

from gateway.rules.schema import Level
from gateway.rules.triggers.base import ACTIVE, IDLE, Key, Predicate, Runner


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


class Crossing:
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
    def load(cls, data: list[Any]) -> Crossing:
        st = cls()
        st.phase, st.since, st.deadline, last_t, st.ref, st.last_in, st.open, st.value = data
        st.last_t = float("-inf") if last_t is None else last_t
        return st


def cross(
    runner: Runner, on: Predicate, off: Predicate, key: Key, st: Crossing, t: float, x: float
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
