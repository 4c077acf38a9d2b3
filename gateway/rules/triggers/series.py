"""The sliding series shared by the rate trigger and sliding windows: one key's readings over a
trailing span, oldest first, and the crossing state of the value computed from them.

Saved as `[[t, value], ...]` plus `Crossing.dump()` in both triggers' state.
"""

from __future__ import annotations

import bisect
from typing import Any

from gateway.rules.triggers.crossing import Crossing


class Series:
    """Readings of one key kept for a window, plus the crossing state of what is computed."""

    __slots__ = ("points", "st")

    def __init__(self) -> None:
        self.points: list[tuple[float, float]] = []
        self.st = Crossing()

    def slide(self, t: float, value: float, horizon: float, keep_horizon: bool) -> bool:
        """Add a reading and drop those older than `horizon` (and those at it, unless
        `keep_horizon`). A reading out of order is slotted into place and nothing is dropped:
        False then, as nothing new is to be computed."""
        points = self.points
        if points and t < points[-1][0]:
            bisect.insort(points, (t, value))
            return False
        points.append((t, value))
        # Mostly nothing is due to go: one comparison with the oldest decides.
        if keep_horizon:
            if points[0][0] < horizon:
                drop = 1
                while drop < len(points) and points[drop][0] < horizon:
                    drop += 1
                del points[:drop]
        elif points[0][0] <= horizon:
            drop = 1
            while drop < len(points) and points[drop][0] <= horizon:
                drop += 1
            del points[:drop]
        return True

    def load_points(self, data: list[Any]) -> None:
        self.points = [(float(a), float(b)) for a, b in data]
