"""The JSON answers of /api/...: status, devices, rules, alerts, sinks and the quarantine.

Each function reads the running gateway's figures and, where the answer lives in the buffer,
queries it through a reader cursor (DuckDB's MVCC keeps it consistent while batches commit).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gateway.buffer import figures

if TYPE_CHECKING:
    from gateway.api.parts import ApiView

SEED_ROWS = 100_000  # how far back a restarted gateway looks for devices' latest values
TIMELINES_SHOWN = 500


def status(api: ApiView) -> dict[str, Any]:
    gw = api.parts
    now = api.now()
    stats = gw.stats
    ingest = gw.ingest
    store = gw.store
    counters = store.counters() if store is not None else {}
    rules = gw.rules
    engine = rules.engine if rules is not None else None
    return {
        "gateway_id": gw.config.gateway_id,
        "uptime_s": round(now - stats.started_at, 1),
        "broker": {
            "address": f"{gw.config.mqtt.host}:{gw.config.mqtt.port}",
            "connected": bool(ingest and ingest.connected.is_set()),
            "connects": ingest.connects if ingest else 0,
            "last_error": ingest.last_error if ingest else None,
            "pending": ingest.pending() if ingest else 0,
        },
        "ingest": {
            "readings_per_s": round(stats.readings_per_second(now), 1),
            "messages": stats.messages,
            "readings": stats.readings,
            "quarantined": stats.quarantined,
            "duplicates_dropped": stats.duplicates,
            "empty_payloads": stats.empty_payloads,
            "batches": stats.batches,
            "commit_failures": stats.commit_failures,
            "last_commit_at": stats.last_commit_at,
        },
        "buffer": {
            "path": str(gw.config.buffer.path),
            "file_bytes": api.buffer_bytes(),
            "counters": counters,
        },
        "rules": {
            "enabled": rules is not None,
            "loaded": len(engine.rules) if engine is not None else 0,
            "active_alerts": len(engine.alerts) if engine is not None else 0,
            "fired": engine.stats.fired if engine is not None else 0,
            "last_reload_error": rules.last_reload_error if rules is not None else None,
        },
        "sinks": [
            {
                k: s[k]
                for k in ("sink", "stream", "backlog_rows", "oldest_unsent_age_s", "last_error")
            }
            for s in api.sinks()
        ],
    }


def devices(api: ApiView) -> list[dict[str, Any]]:
    """Latest value, reading count and sparkline per device and metric."""
    telemetry = api.telemetry
    if not telemetry.has_series() and api.parts.store is not None and not api.seeded:
        api.seeded = True
        with api.reader() as con:
            rows = figures.latest_per_device(con, SEED_ROWS)
        telemetry.seed_series(rows)
    return telemetry.devices()


def registry(api: ApiView, limit: int = 1000) -> list[dict[str, Any]]:
    """The device registry: one row per device, offline ones first (gateway/buffer/devices.py).
    Written at most once a second, so up to a second behind the readings."""
    if api.parts.store is None:
        return []
    with api.reader() as con:
        return figures.registry(con, limit)


def rules(api: ApiView) -> dict[str, Any]:
    service = api.parts.rules
    activity = api.telemetry.rule_activity()
    items: list[dict[str, Any]] = []
    engine = service.engine if service is not None else None
    if engine is not None:
        for compiled in engine.rules:
            rule = compiled.rule
            seen = activity.get(compiled.id)
            items.append(
                {
                    "id": compiled.id,
                    "description": rule.description,
                    "trigger": rule.trigger.type,
                    "source": compiled.source,
                    "firings": seen.firings if seen else 0,
                    "actions": dict(seen.actions) if seen else {},
                    "last_fired_at": seen.last_fired_at if seen else None,
                }
            )
    return {
        "enabled": service is not None,
        "files": [str(f) for f in service.files] if service is not None else [],
        "last_reload_error": service.last_reload_error if service is not None else None,
        "counters": service.counters() if service is not None else {},
        "rules": items,
        # Each device's timeline: its clock, how far behind arrival, late and skewed readings.
        "timelines": engine.timeline_views()[:TIMELINES_SHOWN] if engine is not None else [],
        "recent_firings": api.telemetry.recent_firings(),
    }


def alerts(api: ApiView, limit: int = 100) -> dict[str, Any]:
    """Alerts raised and not cleared (from the alerts table), and the latest changes."""
    if api.parts.store is None:
        return {"active": [], "recent": []}
    with api.reader() as con:
        active = figures.active_alerts(con)
        recent = figures.recent_alerts(con, limit)
    return {"active": active, "recent": recent}


def quarantine(api: ApiView, limit: int = 50) -> dict[str, Any]:
    """The latest quarantined messages (payload head as text) and a count per reason."""
    if api.parts.store is None:
        return {"recent": [], "reasons": []}
    with api.reader() as con:
        recent = figures.recent_quarantine(con, limit)
        reasons = figures.quarantine_reasons(con)
    for row in recent:
        payload = row["payload"]
        row["payload"] = bytes(payload[:200]).decode("utf-8", errors="replace")
    return {"recent": recent, "reasons": reasons}


def snapshot(api: ApiView) -> dict[str, Any]:
    """Everything the dashboard shows, in one message of the event stream."""
    rules_view = rules(api)
    return {
        "time": time.time(),
        "status": status(api),
        "throughput": api.telemetry.throughput_series(),
        "devices": devices(api)[:500],
        "registry": registry(api, limit=500),
        "alerts": alerts(api, limit=20),
        "rules": rules_view["rules"],
        "firings": rules_view["recent_firings"][:20],
        "timelines": rules_view["timelines"][:100],
        "sinks": api.sinks(),
        "quarantine": quarantine(api, limit=20),
    }
