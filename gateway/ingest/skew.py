"""Device times as a route trusts them: the zone of zone-less times, and the skew policy.

A device's clock may be wrong: a Tasmota set to local time taken as UTC, a battery device that
never synced, a clock that jumped back a day. A route says which zone its zone-less device times
are in (`timezone`) and how far a device time may be from the message's arrival before it is
not trusted (`max_clock_skew`). Past it, the reading is stored as the device sent it (event time
and arrival time both kept), tagged `clock_skew: adjusted` or `dropped` by the route's
`clock_skew` policy: the rules run it on its arrival time or do not evaluate it. Restart replays
and backtests read the tag from the buffer, so they decide as the live rules did.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

import orjson

from gateway.config import RouteConfig

VERDICTS = {"adjust": "adjusted", "drop": "dropped"}


class DeviceTimes:
    """One route's reading of device times; None from `of` when the route takes them as sent."""

    __slots__ = ("max_skew", "verdict", "zone")

    def __init__(self, route: RouteConfig) -> None:
        self.zone = None if route.timezone == "UTC" else ZoneInfo(route.timezone)
        self.max_skew = route.max_clock_skew
        self.verdict = VERDICTS[route.clock_skew]

    def local(self, seconds: float) -> float:
        """A zone-less time (read as UTC) as the route's zone means it."""
        if self.zone is None:
            return seconds
        wall = datetime.fromtimestamp(seconds, UTC).replace(tzinfo=self.zone)
        return wall.timestamp()

    def skewed(self, seconds: float, received: float) -> bool:
        return self.max_skew is not None and abs(seconds - received) > self.max_skew


@lru_cache(maxsize=4096)
def with_skew_tag(tags_json: str | None, verdict: str) -> str:
    """The reading's tags with `clock_skew` set (routes' tags repeat: cached)."""
    tags = orjson.loads(tags_json) if tags_json else {}
    tags["clock_skew"] = verdict
    return orjson.dumps(tags, option=orjson.OPT_SORT_KEYS).decode()
