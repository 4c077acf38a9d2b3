"""The rate trigger: the change per `per` over the trailing `window`, against a level."""

from __future__ import annotations

from typing import Any

from gateway.rules.schema import RateTrigger
from gateway.rules.triggers.base import Host, Key, Runner, TriggerContext, key_of
from gateway.rules.triggers.crossing import Crossing, cross, level_predicates
from gateway.rules.triggers.series import Series


class RateRunner(Runner):
    """Change per `per` over the trailing `window` [t - window, t], compared with a level."""

    kind = "rate"

    def __init__(self, rule: int, host: Host, spec: RateTrigger, context: TriggerContext) -> None:
        super().__init__(rule, host, spec, context)
        self.on, self.off = level_predicates(spec, spec.hysteresis)
        self.window = spec.window
        self.per = spec.per
        self.series: dict[Key, Series] = {}

    def on_reading(self, key: Key, t: float, value: float | None, text: str | None) -> None:
        if value is None:
            self.non_numeric += 1
            return
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Series()
        if not series.slide(t, value, t - self.window, True):
            return
        points = series.points  # the newest is (t, value), just added
        t0, v0 = points[0]
        if len(points) < 2 or t <= t0:
            return
        rate = (value - v0) / (t - t0) * self.per
        cross(self, self.on, self.off, key, series.st, t, rate)

    def snapshot(self) -> list[Any]:
        return [[k[0], k[1], s.points, s.st.dump()] for k, s in self.series.items()]

    def restore(self, data: list[Any]) -> None:
        for item in data:
            s = self.series[key_of(item)] = Series()
            s.load_points(item[2])
            s.st = Crossing.load(item[3])
