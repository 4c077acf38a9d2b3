"""The engine's state as JSON-able data, and back: what a restart or a reload continues from
(state.py keeps it in the buffer).

The layout (version 1) is kept as it is: the buffer holds states saved by earlier versions, and
they must keep loading after an upgrade (tests/rules/snapshot_v1.json is one).

    {"version": 1,
     "clock": <the gateway's clock, or null before it knew one>,
     "timelines": [[device or null for the group timeline, clock, lag, shift, device_timed,
                    readings, late, skew_adjusted, skew_dropped], ...],   (since timelines)
     "last_reading_id": <the highest buffer id processed>,
     "latest": [[device, metric, t, value, text, topic, tags, event_id], ...],
     "alerts": [[rule_id, device, metric, severity, message, raised_at], ...],
     "rules": {rule_id: {"digest": <the definition's digest>,
                         "trigger": <the runner's own list>,
                         "last_fire": [[device, metric, t], ...],
                         "running": [[device, metric, step, due, event, [queued events]], ...]}}}
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.rules.actions import AlertChange, Event
from gateway.rules.compile import CompiledRule
from gateway.rules.conditions import Env
from gateway.rules.steps import ActionRunner, Paused
from gateway.rules.timeline import Timeline

# The logger these messages always came from (log settings and filters name it).
logger = logging.getLogger("gateway.rules.engine")

SNAPSHOT_VERSION = 1


class EngineState(Protocol):
    """The parts of the engine a snapshot holds."""

    clock: float
    last_reading_id: int
    timelines: dict[str, Timeline]
    group_timeline: Timeline
    env: Env
    rules: list[CompiledRule]
    actions: ActionRunner


@dataclass(frozen=True, slots=True)
class Restored:
    kept: frozenset[str]  # rules that continue from the snapshot (same id, same definition)
    clock_known: bool  # the snapshot had a clock: the engine starts primed


def take_snapshot(engine: EngineState) -> dict[str, Any]:
    """Everything needed to continue after a restart, as JSON-able data."""
    rules: dict[str, Any] = {}
    for r in engine.rules:
        actions = r.actions
        rules[r.id] = {
            "digest": r.digest,
            "trigger": r.runner.snapshot(),
            "last_fire": [[k[0], k[1], t] for k, t in actions.last_fire.items()],
            "running": [
                [
                    k[0],
                    k[1],
                    s.step,
                    s.due,
                    s.event.as_dict(),
                    [e.as_dict() for e in s.queue],
                ]
                for k, s in actions.running.items()
            ],
        }
    return {
        "version": SNAPSHOT_VERSION,
        "clock": engine.clock if engine.clock != float("-inf") else None,
        "timelines": [[d, *tl.dump()] for d, tl in engine.timelines.items()]
        + [[None, *engine.group_timeline.dump()]],
        "last_reading_id": engine.last_reading_id,
        "latest": [[k[0], k[1], *v] for k, v in engine.env.latest.items()],
        "alerts": [[k[0], k[1], k[2], *v] for k, v in engine.actions.alerts.items()],
        "rules": rules,
    }


def restore_snapshot(engine: EngineState, snapshot: dict[str, Any]) -> Restored | None:
    """Load a snapshot into a freshly built engine; None when its version is unknown (then the
    engine starts afresh). Rules whose definition changed start afresh; their open alerts are
    cleared (reported on the engine's next call) rather than left dangling. Priming the rules
    that start afresh is left to the engine."""
    if snapshot.get("version") != SNAPSHOT_VERSION:
        logger.warning("rules state has version %r; starting afresh", snapshot.get("version"))
        return None
    clock = snapshot.get("clock")
    if clock is not None:
        engine.clock = float(clock)
    engine.last_reading_id = int(snapshot.get("last_reading_id") or 0)
    # Before the runners re-arm their timers: a timer's wake-up depends on its timeline's lag.
    # A state saved before timelines existed has none; they start from the device's next reading.
    for device, *data in snapshot.get("timelines", []):
        if device is None:
            engine.group_timeline = Timeline.load(data, rebases=False)
        else:
            engine.timelines[str(device)] = Timeline.load(data)
    latest = engine.env.latest
    for d, m, t, v, x, topic, tags, eid in snapshot.get("latest", []):
        latest[(d, m)] = (t, v, x, topic, tags, eid)
    actions = engine.actions
    by_id = {r.id: r for r in engine.rules}
    kept: set[str] = set()
    for rule_id, data in snapshot.get("rules", {}).items():
        r = by_id.get(rule_id)
        if r is None or r.digest != data.get("digest"):
            continue
        kept.add(rule_id)
        r.runner.restore(data["trigger"])
        r.actions.last_fire = {(d, m): t for d, m, t in data["last_fire"]}
        for d, m, step, due, event, queue in data["running"]:
            paused = Paused(Event.from_dict(event), step, due, [Event.from_dict(e) for e in queue])
            actions.pause(r.actions, (d, m), paused)
    for rule_id, d, m, severity, message, at in snapshot.get("alerts", []):
        if rule_id in kept:
            actions.alerts[(rule_id, d, m)] = [severity, message, at]
        else:
            actions.out.append(
                AlertChange(
                    rule_id,
                    d,
                    m,
                    engine.clock,
                    severity,
                    "cleared",
                    f"{message} (rule changed or removed)",
                    None,
                    None,
                )
            )
    return Restored(frozenset(kept), clock is not None)
