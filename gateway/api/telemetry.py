"""Telemetry: figures the API, the dashboard and /metrics show that no other part keeps.

Everything here is updated once per batch (a committed readings table, one rules output list,
one sink write), never once per message, so it stays off the ingest profile. The latest values
and the counts by route are folded in at most once a second (`FOLD_EVERY`), or when a reader
asks: a batch's cost there grows with the devices in it, not with its readings, so folding each
small commit on the event loop would cost more than the commit itself.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from gateway.config import RouteConfig
from gateway.ingest.routing import TopicRouter
from gateway.sinks.base import Attempt, Sink, WriteResult

logger = logging.getLogger(__name__)

SPARK_POINTS = 60  # points per sparkline: the last 60 seconds that had a reading
MAX_SERIES = 5000  # (device, metric) pairs kept in memory; the oldest is forgotten past this
THROUGHPUT_SECONDS = 300  # how much per-second history a freshly opened dashboard gets
RECENT_FIRINGS = 100
SEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
NO_ROUTE = "(none)"
FOLD_EVERY = 1.0  # seconds: committed readings wait at most this long to be folded in
_FOLDED_COLUMNS = ["topic", "device", "metric", "value", "text", "unit", "ingest_time"]


@dataclass(slots=True)
class Series:
    """The latest reading of one device's metric and a short history for its sparkline."""

    device: str
    metric: str
    value: float | None
    text: str | None
    unit: str | None
    at: float  # ingest time, epoch seconds
    count: int = 0
    spark: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=SPARK_POINTS))


@dataclass(slots=True)
class Histogram:
    """A Prometheus-style cumulative histogram: counts per upper bound, sum and count."""

    bounds: tuple[float, ...] = SEND_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(SEND_BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.n += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


@dataclass(slots=True)
class RuleActivity:
    firings: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    last_fired_at: float | None = None


class TimedSink:
    """Wraps a sink and records how long each `write_batch` took, failed or not; every other
    member of the sink contract is passed on as it is.

    Not a subclass of `Sink` on purpose: the hooks' defaults would quietly stand in for one this
    class forgot to pass on; as a structural `Sink`, mypy checks that it passes on all of them.
    """

    def __init__(self, inner: Sink, record: Callable[[str, float, bool], None]) -> None:
        self.inner = inner
        self.name = inner.name
        self._record = record

    async def write_batch(self, batch: pa.Table, attempt: Attempt) -> WriteResult:
        started = time.monotonic()
        ok = False
        try:
            result = await self.inner.write_batch(batch, attempt)
            ok = True
            return result
        finally:
            self._record(attempt.stream, time.monotonic() - started, ok)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def prepare(self, stream: str, batch: pa.Table) -> None:
        self.inner.prepare(stream, batch)

    def marks(self, batch: pa.Table, attempt: Attempt) -> dict[str, Any]:
        return self.inner.marks(batch, attempt)

    def stop(self) -> None:
        self.inner.stop()


if TYPE_CHECKING:  # mypy: the wrapper implements (and so passes on) the whole sink contract
    _TIMED_IS_A_SINK: type[Sink] = TimedSink


class Telemetry:
    """Per-route reading counts, latest values per device, throughput history, rule activity,
    and sink send times. Written from the gateway's event loop, read from API threads."""

    def __init__(self, routes: Sequence[RouteConfig], clock: Callable[[], float] = time.time):
        self._router = TopicRouter(list(routes))
        self._route_names = [r.pattern for r in routes]
        self._clock = clock
        # Lock order: _fold_lock (one fold at a time, so "last" stays the last), then _lock (the
        # figures); neither is held while calling out of this module.
        self._fold_lock = threading.Lock()
        self._lock = threading.Lock()
        self.readings_by_route: Counter[str] = Counter()
        self.series: dict[tuple[str, str], Series] = {}
        self.throughput: deque[tuple[int, int]] = deque(maxlen=THROUGHPUT_SECONDS)
        self.rules: dict[str, RuleActivity] = {}
        self.firings: deque[dict[str, Any]] = deque(maxlen=RECENT_FIRINGS)
        self.firing_seq = 0
        self.send_times: dict[tuple[str, str], Histogram] = {}
        self.send_failures: Counter[tuple[str, str]] = Counter()
        self._failed = False
        self._unfolded: list[pa.Table] = []  # committed readings not in the figures yet
        self._folded_at = float("-inf")

    # -- ingest -----------------------------------------------------------------------------
    async def on_commit(self, readings: pa.Table) -> None:
        """Batch listener: counts by route, latest value per series, readings per second.

        A fault here must never stop ingest: it is logged (once) and the figures go stale.
        """
        try:
            self.observe_readings(readings)
        except Exception:
            if not self._failed:
                self._failed = True
                logger.exception("telemetry stopped counting; ingest goes on")

    def observe_readings(self, readings: pa.Table) -> None:
        n = readings.num_rows
        if n == 0:
            return
        now = self._clock()
        second = int(now)
        with self._lock:
            if self.throughput and self.throughput[-1][0] == second:
                self.throughput[-1] = (second, self.throughput[-1][1] + n)
            else:
                self.throughput.append((second, n))
            self._unfolded.append(readings.select(_FOLDED_COLUMNS))
            due = now - self._folded_at >= FOLD_EVERY
        if due:
            self._fold(wait=False)  # a reader folding right now does it for us

    def _fold(self, wait: bool = True) -> None:
        """Counts by route and the latest value per series, from the readings not folded yet."""
        if not self._fold_lock.acquire(blocking=wait):
            return
        try:
            with self._lock:
                now = self._clock()
                self._folded_at = now
                unfolded, self._unfolded = self._unfolded, []
            if not unfolded:
                return
            readings = pa.concat_tables(unfolded)
            by_topic = pc.value_counts(readings.column("topic")).to_pylist()
            grouped = readings.group_by(["device", "metric"], use_threads=False).aggregate(
                [
                    ("value", "last"),
                    ("text", "last"),
                    ("unit", "last"),
                    ("ingest_time", "max"),
                    ("device", "count"),
                ]
            )
            with self._lock:
                for item in by_topic:
                    match = self._router.route(item["values"])
                    name = self._route_names[match.route_index] if match else NO_ROUTE
                    self.readings_by_route[name] += int(item["counts"])
                self._update_series(grouped, int(now))
        finally:
            self._fold_lock.release()

    def _update_series(self, grouped: pa.Table, second: int) -> None:
        # Timestamps as integer microseconds: datetime objects would cost most of the time here.
        columns = [
            (col.cast(pa.int64()) if pa.types.is_timestamp(col.type) else col).to_pylist()
            for col in grouped.columns
        ]
        for device, metric, value, text, unit, at, count in zip(*columns, strict=True):
            key = (device, metric)
            series = self.series.get(key)
            if series is None:
                if len(self.series) >= MAX_SERIES:
                    oldest = min(self.series.values(), key=lambda s: s.at)
                    del self.series[(oldest.device, oldest.metric)]
                series = self.series[key] = Series(device, metric, value, text, unit, 0.0)
            series.value, series.text, series.unit = value, text, unit
            series.at = at / 1e6 if at is not None else float(second)
            series.count += int(count)
            if value is not None:
                spark = series.spark
                point = int(series.at)  # the second it arrived, not the fold's
                if spark and spark[-1][0] == point:
                    spark[-1] = (point, value)
                else:
                    spark.append((point, value))

    def seed_series(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Fill latest values from the buffer after a restart (device, metric, value, text,
        unit, ingest time as epoch seconds, count); live readings then take over."""
        with self._lock:
            for device, metric, value, text, unit, at, count in rows:
                if (device, metric) not in self.series and len(self.series) < MAX_SERIES:
                    series = Series(device, metric, value, text, unit, float(at), int(count))
                    if value is not None:
                        series.spark.append((int(at), value))
                    self.series[(device, metric)] = series

    def has_series(self) -> bool:
        self._fold()
        with self._lock:
            return bool(self.series)

    def route_counts(self) -> dict[str, int]:
        self._fold()
        with self._lock:
            return dict(self.readings_by_route)

    def devices(self) -> list[dict[str, Any]]:
        self._fold()
        with self._lock:
            items = sorted(self.series.values(), key=lambda s: (s.device, s.metric))
            return [
                {
                    "device": s.device,
                    "metric": s.metric,
                    "value": s.value,
                    "text": s.text,
                    "unit": s.unit,
                    "at": s.at,
                    "readings": s.count,
                    "spark": [v for _, v in s.spark],
                }
                for s in items
            ]

    def throughput_series(self, seconds: int = 120) -> list[list[int]]:
        """[second, readings] for each of the last `seconds` seconds, zeros filled in."""
        now = int(self._clock())
        with self._lock:
            counts = dict(self.throughput)
        return [[t, counts.get(t, 0)] for t in range(now - seconds + 1, now + 1)]

    # -- rules ------------------------------------------------------------------------------
    def observe_rule_outputs(self, outputs: Sequence[Any]) -> None:
        """Rules service observer: one call per evaluated batch or tick with what it emitted.

        A firing is the set of outputs one rule emitted for one device at one moment.
        """
        try:
            self._observe_rule_outputs(outputs)
        except Exception:  # figures must never stop the rules from acting
            if not self._failed:
                self._failed = True
                logger.exception("telemetry stopped counting rule firings; rules go on")

    def _observe_rule_outputs(self, outputs: Sequence[Any]) -> None:
        groups: dict[tuple[str, str, float], list[Any]] = {}
        for output in outputs:
            groups.setdefault((output.rule_id, output.device, output.time), []).append(output)
        with self._lock:
            for (rule_id, device, at), items in groups.items():
                activity = self.rules.setdefault(rule_id, RuleActivity())
                activity.firings += 1
                activity.last_fired_at = at
                kinds = [_action_kind(o) for o in items]
                activity.actions.update(kinds)
                message = next(
                    (getattr(o, "message", None) for o in items if hasattr(o, "message")), None
                )
                self.firing_seq += 1
                self.firings.append(
                    {
                        "seq": self.firing_seq,
                        "time": at,
                        "rule_id": rule_id,
                        "device": device,
                        "actions": kinds,
                        "message": message,
                    }
                )

    def rule_activity(self) -> dict[str, RuleActivity]:
        with self._lock:
            return {
                k: RuleActivity(v.firings, Counter(v.actions), v.last_fired_at)
                for k, v in self.rules.items()
            }

    def recent_firings(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.firings)[-limit:][::-1]

    # -- sinks ------------------------------------------------------------------------------
    def timed(self, sink: Sink) -> TimedSink:
        name = sink.name

        def record(stream: str, seconds: float, ok: bool) -> None:
            with self._lock:
                if ok:
                    self.send_times.setdefault((name, stream), Histogram()).observe(seconds)
                else:
                    self.send_failures[(name, stream)] += 1

        return TimedSink(sink, record)

    def send_histograms(self) -> dict[tuple[str, str], Histogram]:
        with self._lock:
            return {
                k: Histogram(v.bounds, list(v.counts), v.total, v.n)
                for k, v in self.send_times.items()
            }


def _action_kind(output: Any) -> str:
    kind = type(output).__name__
    return {
        "Command": "mqtt",
        "AlertChange": f"alert_{getattr(output, 'state', 'raised')}",
        "WebhookCall": "webhook",
        "LogLine": "log",
    }.get(kind, kind.lower())
