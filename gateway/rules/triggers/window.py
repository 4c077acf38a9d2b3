"""The window trigger: an aggregate over tumbling, hopping or sliding windows, per key or across
the group, against a level."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.rules.schema import WindowTrigger
from gateway.rules.triggers.base import GROUP_KEY, Host, Key, Runner, TriggerContext, key_of
from gateway.rules.triggers.crossing import Crossing, cross, level_predicates
from gateway.rules.triggers.series import Series

AGGREGATES: dict[str, Callable[[list[float]], float]] = {
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

    def __init__(self, rule: int, host: Host, spec: WindowTrigger, context: TriggerContext) -> None:
        super().__init__(rule, host, spec, context)
        self.on, self.off = level_predicates(spec, spec.hysteresis)
        self.kind_ = spec.kind
        self.size = spec.size
        self.hop = spec.hop if spec.hop is not None else spec.size
        self.agg = AGGREGATES[spec.agg]
        self.counting = spec.agg == "count"
        self.group = spec.group == "all"
        # key -> window start -> values (tumbling/hopping); key -> series (sliding, crossing)
        self.open: dict[Key, dict[float, list[float]]] = {}
        self.series: dict[Key, Series] = {}

    def on_reading(self, key: Key, t: float, value: float | None, text: str | None) -> None:
        if value is None:
            if not self.counting:
                self.non_numeric += 1
                return
            value = 0.0
        if self.group:
            key = GROUP_KEY
        if self.kind_ == "sliding":
            series = self.series.get(key)
            if series is None:
                series = self.series[key] = Series()
            if series.slide(t, value, t - self.size, False):
                result = self.agg([v for _, v in series.points])
                cross(self, self.on, self.off, key, series.st, t, result)
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

    def on_timer(self, key: Key, due: float, arg: Any) -> None:
        windows = self.open.get(key)
        if windows is None or arg not in windows:
            return
        values = windows.pop(arg)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Series()
        cross(self, self.on, self.off, key, series.st, due, self.agg(values))

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
            key = key_of(item)
            if item[2]:
                windows = self.open[key] = {}
                for start, vals in item[2]:
                    windows[float(start)] = [float(v) for v in vals]
                    self.host.at_watermark(float(start) + self.size, self, key, float(start))
            if item[4] is not None:
                s = self.series[key] = Series()
                s.load_points(item[3])
                s.st = Crossing.load(item[4])
