"""/metrics: the gateway's figures in the Prometheus text format, gathered at scrape time.

Nothing is counted here: a scrape reads the counters the parts already keep (ingest stats, the
MQTT client, the rules service, the forwarders, telemetry) and the buffer's size, so scraping
costs the hot path nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

import gateway
from gateway.buffer import figures

if TYPE_CHECKING:
    from gateway.api.parts import ApiView

logger = logging.getLogger(__name__)

PREFIX = "edge_gateway"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class GatewayCollector(Collector):
    """Builds every metric family from the running gateway on each scrape."""

    def __init__(self, api: ApiView) -> None:
        self.api = api

    def collect(self) -> Iterator[Metric]:
        gw = self.api.parts
        stats = gw.stats
        yield _gauge(
            "info",
            "The gateway's id and version.",
            1,
            gateway_id=gw.config.gateway_id,
            version=gateway.__version__,
        )
        yield _gauge(
            "uptime_seconds",
            "Seconds since the gateway started.",
            self.api.now() - stats.started_at,
        )
        # -- ingest
        yield _counter(
            "mqtt_messages", "MQTT messages committed (readings or quarantine).", stats.messages
        )
        by_route = CounterMetricFamily(
            f"{PREFIX}_readings",
            "Readings committed to the buffer, by route pattern.",
            labels=["route"],
        )
        for route, count in sorted(self.api.telemetry.route_counts().items()):
            by_route.add_metric([route], count)
        yield by_route
        yield _counter(
            "quarantined",
            "Messages quarantined (bad payload, no route, too large).",
            stats.quarantined,
        )
        yield _counter(
            "duplicates_dropped",
            "MQTT redeliveries recognised and not stored again.",
            stats.duplicates,
        )
        yield _counter(
            "empty_payloads",
            "MQTT messages with an empty payload: no reading (an empty retained message deletes "
            "the broker's retained value).",
            stats.empty_payloads,
        )
        yield _counter("batches", "Batches committed to the buffer.", stats.batches)
        yield _counter(
            "commit_failures", "Buffer commits that failed and were retried.", stats.commit_failures
        )
        ingest = gw.ingest
        yield _gauge(
            "mqtt_connected",
            "1 while connected to the MQTT broker.",
            int(bool(ingest and ingest.connected.is_set())),
        )
        connects = ingest.connects if ingest else 0
        yield _counter(
            "mqtt_reconnects",
            "Connections to the broker after the first one.",
            max(connects - 1, 0),
        )
        yield _gauge(
            "mqtt_pending_messages",
            "Messages received and not yet committed.",
            ingest.pending() if ingest else 0,
        )
        yield from self._rules()
        yield from self._buffer()
        yield from self._sinks()
        yield from self._memory()

    def _rules(self) -> Iterator[Metric]:
        activity = self.api.telemetry.rule_activity()
        firings = CounterMetricFamily(
            f"{PREFIX}_rule_firings",
            "Times a rule acted on a device (fired or cleared).",
            labels=["rule"],
        )
        actions = CounterMetricFamily(
            f"{PREFIX}_rule_actions",
            "Actions rules emitted, by rule and kind.",
            labels=["rule", "action"],
        )
        for rule_id, item in sorted(activity.items()):
            firings.add_metric([rule_id], item.firings)
            for kind, count in sorted(item.actions.items()):
                actions.add_metric([rule_id, kind], count)
        yield firings
        yield actions
        rules = self.api.parts.rules
        failures = CounterMetricFamily(
            f"{PREFIX}_rule_action_failures",
            "Rule actions that failed: MQTT publish errors, webhooks failed or dropped.",
            labels=["kind"],
        )
        times = CounterMetricFamily(
            f"{PREFIX}_rule_readings_off_time",
            "Readings the rules took off their device time: late on its device's timeline "
            "(dropped), or past the route's max_clock_skew (adjusted to arrival, or dropped).",
            labels=["outcome"],
        )
        loaded = active = 0
        if rules is not None:
            ex = rules.executor
            failures.add_metric(["mqtt_publish"], getattr(ex, "publish_failures", 0))
            failures.add_metric(["webhook"], ex.webhooks_failed)
            failures.add_metric(["webhook_dropped"], ex.webhooks_dropped)
            engine = rules.engine
            if engine is not None:
                loaded, active = len(engine.rules), len(engine.alerts)
                stats = engine.stats
                times.add_metric(["late_dropped"], stats.late_dropped)
                times.add_metric(["clock_skew_adjusted"], stats.clock_skew_adjusted)
                times.add_metric(["clock_skew_dropped"], stats.clock_skew_dropped)
        yield failures
        yield times
        yield _gauge("rules_loaded", "Rules the engine runs.", loaded)
        yield _gauge("alerts_active", "Alerts raised and not yet cleared.", active)

    def _buffer(self) -> Iterator[Metric]:
        rows = GaugeMetricFamily(
            f"{PREFIX}_buffer_rows", "Rows held in the buffer, by table.", labels=["table"]
        )
        totals = CounterMetricFamily(
            f"{PREFIX}_buffer_events",
            "Lifetime totals the buffer keeps across restarts (purges, alerts, ...).",
            labels=["counter"],
        )
        store = self.api.parts.store
        if store is not None:
            try:
                with self.api.reader() as con:
                    for table, count in figures.table_rows(con).items():
                        rows.add_metric([table], count)
                    for name, value in figures.counters(con).items():
                        totals.add_metric([name.removesuffix("_total")], value)
            except duckdb.Error as exc:
                logger.warning("metrics: buffer figures unavailable: %s", exc)
        yield rows
        yield totals
        yield _gauge(
            "buffer_bytes",
            "Size of the buffer file and its write-ahead log.",
            self.api.buffer_bytes(),
        )

    def _sinks(self) -> Iterator[Metric]:
        labels = ["sink", "stream"]
        families: dict[str, Any] = {
            "backlog_rows": GaugeMetricFamily(
                f"{PREFIX}_sink_backlog_rows",
                "Buffer rows the sink has not confirmed.",
                labels=labels,
            ),
            "oldest_unsent_age_s": GaugeMetricFamily(
                f"{PREFIX}_sink_backlog_age_seconds",
                "Age of the oldest row the sink has not confirmed (0 when caught up).",
                labels=labels,
            ),
            "sent_rows": CounterMetricFamily(
                f"{PREFIX}_sink_sent_rows", "Rows the sink confirmed.", labels=labels
            ),
            "sent_bytes": CounterMetricFamily(
                f"{PREFIX}_sink_sent_bytes", "Bytes sent to the sink.", labels=labels
            ),
            "failures": CounterMetricFamily(
                f"{PREFIX}_sink_retries", "Failed sends, each retried with backoff.", labels=labels
            ),
            "dead_letters": CounterMetricFamily(
                f"{PREFIX}_sink_dead_letters", "Rows the sink refused for good.", labels=labels
            ),
        }
        for entry in self.api.sinks():
            key = [entry["sink"], entry["stream"]]
            for name, family in families.items():
                family.add_metric(key, entry.get(name) or 0)
        yield from families.values()
        latency = HistogramMetricFamily(
            f"{PREFIX}_sink_send_seconds", "Time a confirmed batch took to send.", labels=labels
        )
        for (sink, stream), hist in sorted(self.api.telemetry.send_histograms().items()):
            latency.add_metric([sink, stream], hist.cumulative(), hist.total)
        yield latency

    def _memory(self) -> Iterator[Metric]:
        """Where the process's memory goes: a long-running box must see growth, and its owner."""
        yield _gauge(
            "process_resident_bytes", "Resident memory of the gateway process.", resident_bytes()
        )
        yield _gauge(
            "arrow_allocated_bytes",
            "Bytes held by Arrow's memory pool (batches in flight).",
            pa.total_allocated_bytes(),
        )
        tags = GaugeMetricFamily(
            f"{PREFIX}_buffer_memory_bytes",
            "Memory DuckDB holds for the buffer (its block cache and working memory), by tag.",
            labels=["tag"],
        )
        if self.api.parts.store is not None:
            try:
                with self.api.reader() as con:
                    for tag, used in figures.memory_by_tag(con).items():
                        tags.add_metric([tag], used)
            except duckdb.Error as exc:
                logger.warning("metrics: buffer memory unavailable: %s", exc)
        yield tags
        reopens = CounterMetricFamily(
            f"{PREFIX}_buffer_reopens",
            "Times the buffer's database was closed and opened again: every few thousand "
            "commits to give back DuckDB's memory (recycle), or after a fatal error (error).",
            labels=["reason"],
        )
        store = self.api.parts.store
        if store is not None:
            reopens.add_metric(["recycle"], store.recycles)
            reopens.add_metric(["error"], store.reopens)
        yield reopens


def resident_bytes() -> int:
    """VmRSS of this process (Linux), 0 where /proc is missing."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _gauge(name: str, doc: str, value: float, **labels: str) -> GaugeMetricFamily:
    if not labels:
        return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)
    family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def render_metrics(api: ApiView) -> bytes:
    """The exposition text for one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(api))
    return bytes(generate_latest(registry))
