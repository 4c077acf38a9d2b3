"""A timeline: one device's own time, as the rules see it.

Every device has its own clock, the latest time of its readings, and its own watermark, that
clock minus `allowed_lateness`. The watermark decides which of the device's readings are late,
and the device's timers (a pending `for`, silence, the end of a window) run when it passes them.
A device ten seconds behind, an hour ahead or stuck in 1970 moves no time but its own.

A silent device still has timers to run (silence is exactly that). Its `lag`, arrival time minus
device time of its latest reading, maps its time onto the gateway's: a timer due at device time
X runs by the gateway's clock at X + lag + lateness, and moves the timeline only as far as that
timer (readings of the device still queued at the broker are late only if older than it).

Where a reading's time comes from matters: the device's own clock, or the arrival time (the
device sends none, or the route's skew policy replaced it). When a device switches between the
two and the new times would fall behind its clock, the timeline keeps its frame: it shifts the
new times by the difference of the two lags, so a device that ran a minute ahead and then stops
sending times goes on a minute ahead (its rules' state, `for` and windows continue) instead of
having every reading judged late for a minute. The shift holds until the next switch.

Windows across devices (`group: all`) run on one group timeline, advanced by the latest reading
of any device they see (it mixes sources, so it is never re-based).
"""

from __future__ import annotations

from typing import Any

from gateway.rules.timers import Timers

NEVER = float("-inf")


class Timeline:
    """One device's clock, lag, timers and counters. `wake` is the gateway time at which the
    engine's clock next looks at it (its earliest timer, mapped by its lag); inf when none."""

    __slots__ = (
        "clock",
        "device_timed",
        "lag",
        "late",
        "readings",
        "rebases",
        "shift",
        "skew_adjusted",
        "skew_dropped",
        "timers",
        "wake",
    )

    def __init__(self, *, rebases: bool = True) -> None:
        self.rebases = rebases
        self.clock = NEVER
        self.lag = 0.0
        self.shift = 0.0  # added to the times of its readings since the last switch of source
        self.device_timed: bool | None = None  # None: no reading yet
        self.timers = Timers()
        self.wake = float("inf")
        self.readings = 0
        self.late = 0
        self.skew_adjusted = 0
        self.skew_dropped = 0

    def admit(self, t: float, arrival: float, device_timed: bool, lateness: float) -> float | None:
        """A reading at time `t` that arrived at `arrival`: its time on this timeline when the
        rules evaluate it, None when it is older than the watermark (counted as late)."""
        self.readings += 1
        if device_timed is not self.device_timed and self.rebases:
            if self.device_timed is not None and t < self.clock:
                self.shift = (arrival - t) - self.lag  # keep the frame: a - shifted t == lag
            else:
                self.shift = 0.0
            self.device_timed = device_timed
        t += self.shift
        if t > self.clock:
            self.clock = t
            self.lag = arrival - t
            return t
        if t < self.clock - lateness:
            self.late += 1
            return None
        return t

    def dump(self) -> list[Any]:
        clock = None if self.clock == NEVER else self.clock
        return [
            clock,
            self.lag,
            self.shift,
            self.device_timed,
            self.readings,
            self.late,
            self.skew_adjusted,
            self.skew_dropped,
        ]

    @classmethod
    def load(cls, data: list[Any], *, rebases: bool = True) -> Timeline:
        timeline = cls(rebases=rebases)
        clock, lag, shift, timed, readings, late, adjusted, dropped = data
        timeline.clock = NEVER if clock is None else float(clock)
        timeline.lag, timeline.shift = float(lag), float(shift)
        timeline.device_timed = None if timed is None else bool(timed)
        timeline.readings, timeline.late = int(readings), int(late)
        timeline.skew_adjusted, timeline.skew_dropped = int(adjusted), int(dropped)
        return timeline

    def view(self, device: str) -> dict[str, Any]:
        """What /api/rules shows for it."""
        return {
            "device": device,
            "clock": None if self.clock == NEVER else round(self.clock, 3),
            "lag_s": round(self.lag, 3),
            "shift_s": round(self.shift, 3),
            "time_source": {True: "device", False: "arrival", None: None}[self.device_timed],
            "readings": self.readings,
            "late_dropped": self.late,
            "clock_skew_adjusted": self.skew_adjusted,
            "clock_skew_dropped": self.skew_dropped,
        }
