"""Topic routing: named topic patterns map a topic to device, metric, tags and a decoder."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from gateway.config import DecoderName, RouteConfig
from gateway.ingest.skew import DeviceTimes

_CACHE_LIMIT = 100_000


@dataclass(slots=True, frozen=True)
class RouteMatch:
    """Where a topic's readings belong; `metric` is None when the payload names metrics."""

    route_index: int
    decoder: DecoderName
    device: str
    metric: str | None
    unit: str | None
    tags_json: str | None
    dedup_window: float | None = None  # seconds; see gateway/ingest/content.py
    times: DeviceTimes | None = None  # the route's zone and skew policy; None: as sent


class _CompiledRoute:
    __slots__ = ("config", "has_hash", "index", "levels", "times")

    def __init__(self, index: int, config: RouteConfig) -> None:
        self.index = index
        self.config = config
        self.times = DeviceTimes(config)
        self.levels = config.pattern.split("/")
        self.has_hash = self.levels[-1] == "#"

    def match(self, parts: list[str]) -> dict[str, str] | None:
        levels = self.levels
        if self.has_hash:
            if len(parts) < len(levels) - 1:
                return None
            levels = levels[:-1]
        elif len(parts) != len(levels):
            return None
        named: dict[str, str] = {}
        for level, part in zip(levels, parts, strict=False):
            if level == "+":
                continue
            if level.startswith("{"):
                if not part:
                    return None
                named[level[1:-1]] = part
            elif level != part:
                return None
        return named


class TopicRouter:
    """First matching route wins. Results are cached per topic, since device topics repeat."""

    def __init__(self, routes: list[RouteConfig]) -> None:
        self._routes = [_CompiledRoute(i, r) for i, r in enumerate(routes)]
        self.dedups = any(r.dedup_window for r in routes)  # some route has a dedup window
        self._cache: dict[str, RouteMatch | None] = {}

    def route(self, topic: str) -> RouteMatch | None:
        try:
            return self._cache[topic]
        except KeyError:
            pass
        match = self._resolve(topic)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()  # a topic flood must not grow memory without bound
        self._cache[topic] = match
        return match

    def _resolve(self, topic: str) -> RouteMatch | None:
        parts = topic.split("/")
        for route in self._routes:
            named = route.match(parts)
            if named is None:
                continue
            config = route.config
            device = named.pop("device", None) or config.device
            if device is None:
                continue  # a route without {device} must set `device:`; config check says so
            metric = named.pop("metric", None) or config.metric
            tags = {**config.tags, **named}
            return RouteMatch(
                route_index=route.index,
                decoder=config.decoder,
                device=device,
                metric=metric,
                unit=config.unit,
                tags_json=orjson.dumps(tags, option=orjson.OPT_SORT_KEYS).decode()
                if tags
                else None,
                dedup_window=config.dedup_window,
                times=route.times,
            )
        return None
