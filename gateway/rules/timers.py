"""Timers: what runs when the watermark passes a time (a pending `for`, silence, the end of a
window) and what runs when the clock reaches one (schedules, sun events, action sequences paused
at a `delay`).

Two heaps of (due, seq, target, key, arg); `seq` keeps timers due at the same time in the order
they were armed. Timers are not saved: restoring a snapshot re-arms them.
"""

from __future__ import annotations

import heapq
from typing import Any, Protocol

from gateway.rules.triggers.base import Key


class TimerTarget(Protocol):
    """What a timer calls when it runs out: a trigger runner, or the action runner."""

    def on_timer(self, key: Key, due: float, arg: Any) -> None: ...


Timer = tuple[float, int, TimerTarget, Key, Any]


class Timers:
    """The armed timers. `by_watermark` and `by_clock` are heaps the engine peeks at per
    reading (their heads say whether anything is due); they are never replaced."""

    __slots__ = ("_seq", "by_clock", "by_watermark")

    def __init__(self) -> None:
        self.by_watermark: list[Timer] = []
        self.by_clock: list[Timer] = []
        self._seq = 0

    def at_watermark(self, due: float, target: TimerTarget, key: Key, arg: Any) -> None:
        self._seq += 1
        heapq.heappush(self.by_watermark, (due, self._seq, target, key, arg))

    def at_clock(self, due: float, target: TimerTarget, key: Key, arg: Any) -> None:
        self._seq += 1
        heapq.heappush(self.by_clock, (due, self._seq, target, key, arg))

    def run(self, clock: float, lateness: float) -> None:
        """Run every timer due at `clock` (watermark timers at clock minus lateness), earliest
        first; a watermark timer goes before a clock timer due at the same time."""
        wm_timers, clock_timers = self.by_watermark, self.by_clock
        watermark = clock - lateness
        while True:
            wm_due = wm_timers[0][0] if wm_timers and wm_timers[0][0] <= watermark else None
            clock_due = clock_timers[0][0] if clock_timers and clock_timers[0][0] <= clock else None
            if wm_due is None and clock_due is None:
                return
            if clock_due is None or (wm_due is not None and wm_due <= clock_due):
                due, _, target, key, arg = heapq.heappop(wm_timers)
            else:
                due, _, target, key, arg = heapq.heappop(clock_timers)
            target.on_timer(key, due, arg)
