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
    pattern: str
    decoder: DecoderName
    device: str
    metric: str | None
    unit: str | None
    tags_json: str | None
    dedup_window: float | None = None  # seconds; see gateway/ingest/content.py
    times: DeviceTimes | None = None  # the route's zone and skew policy; None: as sent


class _CompiledRoute:
    """A route's pattern split at its one multi-level capture, if any: `zigbee2mqtt/{device...}
    /availability` is the levels before it, its name, and the levels after it."""

    __slots__ = ("config", "has_hash", "head", "index", "levels", "rest", "tail", "times")

    def __init__(self, index: int, config: RouteConfig) -> None:
        self.index = index
        self.config = config
        self.times = DeviceTimes(config)
        self.levels = config.pattern.split("/")
        self.has_hash = self.levels[-1] == "#"
        self.rest: str | None = None  # the name of the multi-level capture
        self.head = self.levels
        self.tail: list[str] = []
        for i, level in enumerate(self.levels):
            if level.endswith("...}"):
                self.rest = level[1:-4]
                self.head, self.tail = self.levels[:i], self.levels[i + 1 :]

    def match(self, parts: list[str]) -> dict[str, str] | None:
        if self.rest is not None:
            return self._match_rest(parts)
        levels = self.levels
        if self.has_hash:
            if len(parts) < len(levels) - 1:
                return None
            levels = levels[:-1]
        elif len(parts) != len(levels):
            return None
        named: dict[str, str] = {}
        if not _match_levels(levels, parts, named):
            return None
        return named

    def _match_rest(self, parts: list[str]) -> dict[str, str] | None:
        head, tail = self.head, self.tail
        end = len(parts) - len(tail)
        if end <= len(head):  # the capture takes one level at least
            return None
        named: dict[str, str] = {}
        if not _match_levels(head, parts, named) or not _match_levels(tail, parts[end:], named):
            return None
        captured = parts[len(head) : end]
        if not all(captured):
            return None
        assert self.rest is not None
        # Metric names are dotted paths everywhere (a JSON field `relay.0`); other names keep
        # the topic's levels (a Zigbee2MQTT friendly name `kitchen/door`).
        named[self.rest] = (".".join if self.rest == "metric" else "/".join)(captured)
        return named


def _match_levels(levels: list[str], parts: list[str], named: dict[str, str]) -> bool:
    for level, part in zip(levels, parts, strict=False):
        if level == "+":
            continue
        if level.startswith("{"):
            if not part:
                return False
            named[level[1:-1]] = part
        elif level != part:
            return False
    return True


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
                pattern=config.pattern,
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
