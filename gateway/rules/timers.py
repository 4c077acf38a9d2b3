"""Timers: a heap of (due, seq, target, key, arg) that runs what is due, earliest first.

The engine keeps one on the gateway's clock (schedules, sun events, action sequences paused at a
`delay`, and the wake-ups of silent timelines) and each timeline keeps one on its own device
time (a pending `for`, silence, the end of a window). `seq` keeps timers due at the same time in
the order they were armed. Timers are not saved: restoring a snapshot re-arms them.
"""

from __future__ import annotations

import heapq
from typing import Any, Protocol

from gateway.rules.triggers.base import Key


class TimerTarget(Protocol):
    """What a timer calls when it runs out: a trigger runner, the action runner, a timeline."""

    def on_timer(self, key: Key, due: float, arg: Any) -> None: ...


Timer = tuple[float, int, TimerTarget, Key, Any]


class Timers:
    """Armed timers. `heap` is peeked at per reading (its head says whether anything is due)."""

    __slots__ = ("_seq", "heap")

    def __init__(self) -> None:
        self.heap: list[Timer] = []
        self._seq = 0

    def at(self, due: float, target: TimerTarget, key: Key, arg: Any) -> None:
        self._seq += 1
        heapq.heappush(self.heap, (due, self._seq, target, key, arg))

    def next_due(self) -> float | None:
        return self.heap[0][0] if self.heap else None

    def run(self, until: float) -> float | None:
        """Run every timer due at or before `until`, earliest first (a timer may arm others);
        the due time of the last one run, None when none was due."""
        heap = self.heap
        last: float | None = None
        while heap and heap[0][0] <= until:
            due, _, target, key, arg = heapq.heappop(heap)
            last = due
            target.on_timer(key, due, arg)
        return last

    def __len__(self) -> int:
        return len(self.heap)
