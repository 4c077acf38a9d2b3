"""Running a rule's actions: compiled once to steps, run in order when the rule fires, paused
at a `delay`; `cooldown` and `mode` (ignore, restart, queue) decide what a re-trigger does.
Steps fill their templates into the outputs of actions.py; the alerts raised and not yet
cleared are kept here, so an alert is raised once and cleared once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.rules.actions import (
    AlertChange,
    Command,
    Event,
    LogLine,
    Output,
    Template,
    WebhookCall,
)
from gateway.rules.schema import Action, Rule
from gateway.rules.stats import EngineStats
from gateway.rules.timers import Timers
from gateway.rules.triggers.base import Key

# The logger these messages always came from (log settings and filters name it).
logger = logging.getLogger("gateway.rules.engine")

AlertKey = tuple[str, str, str]  # (rule id, device, metric)


@dataclass(slots=True)
class Step:
    kind: str
    spec: Any
    templates: tuple[Template | None, ...] = ()
    seconds: float = 0.0


def compile_steps(actions: list[Action]) -> list[Step]:
    steps = []
    for action in actions:
        if action.mqtt is not None:
            a = action.mqtt
            steps.append(Step("mqtt", a, (Template(a.topic), Template(a.payload))))
        elif action.alert is not None:
            steps.append(Step("alert", action.alert, (Template(action.alert.message),)))
        elif action.webhook is not None:
            w = action.webhook
            steps.append(Step("webhook", w, (Template(w.body) if w.body is not None else None,)))
        elif action.log is not None:
            steps.append(Step("log", action.log, (Template(action.log.message),)))
        else:
            assert action.delay is not None
            steps.append(Step("delay", None, (), action.delay))
    return steps


@dataclass(slots=True)
class Paused:
    """An action sequence paused at a `delay`, and the events queued behind it (mode: queue)."""

    event: Event
    step: int
    due: float
    queue: list[Event] = field(default_factory=list)


class RuleActions:
    """One rule's steps and re-trigger policy, and their state per key: when it last fired and
    the sequence paused at a `delay`."""

    __slots__ = (
        "clear_steps",
        "cooldown",
        "id",
        "last_fire",
        "max_queued",
        "mode",
        "running",
        "steps",
    )

    def __init__(self, rule: Rule) -> None:
        self.id = rule.id
        self.steps = compile_steps(rule.actions)
        self.clear_steps = compile_steps(rule.on_clear)
        self.cooldown = rule.cooldown
        self.mode = rule.mode
        self.max_queued = rule.max_queued
        self.last_fire: dict[Key, float] = {}
        self.running: dict[Key, Paused] = {}


class ActionRunner:
    """Runs the rules' actions; holds the outputs not yet handed out and the open alerts."""

    __slots__ = ("alerts", "now", "out", "send", "stats", "timers")

    def __init__(self, stats: EngineStats, timers: Timers, now: Callable[[], float]) -> None:
        """`timers` and `now` are the gateway's clock: a `delay` counts on it, not on the
        device's time (a device an hour ahead must not hold a sequence for an extra hour)."""
        self.stats = stats
        self.timers = timers
        self.now = now
        self.out: list[Output] = []
        # Set while live readings are evaluated: each command is handed out as it is made, so
        # it leaves before the rest of the batch is evaluated (it stays in `out` as well).
        self.send: Callable[[Command], None] | None = None
        # (rule id, device, metric) -> [severity, message, raised at]
        self.alerts: dict[AlertKey, list[Any]] = {}

    def take(self) -> list[Output]:
        """The outputs emitted since the last call."""
        out, self.out = self.out, []
        return out

    def fire(self, r: RuleActions, key: Key, event: Event, t: float) -> bool:
        """The rule fired and its conditions hold: run its actions unless the cooldown or the
        mode says otherwise. True when they ran (or were queued)."""
        stats = self.stats
        if r.cooldown:
            last = r.last_fire.get(key)
            if last is not None and t - last < r.cooldown:
                stats.cooldown_suppressed += 1
                return False
        running = r.running.get(key)
        if running is not None:
            if r.mode == "ignore":
                stats.retrigger_ignored += 1
                return False
            if r.mode == "queue":
                if len(running.queue) >= r.max_queued:
                    stats.queue_dropped += 1
                    return False
                running.queue.append(event)
                r.last_fire[key] = t
                stats.fired += 1
                return True
            del r.running[key]  # restart: the paused sequence's timer finds it gone
        r.last_fire[key] = t
        stats.fired += 1
        now = self.now()
        self._run_steps(r, key, event, 0, t, [], t if now == float("-inf") else now)
        return True

    def clear(self, r: RuleActions, key: Key, event: Event, t: float) -> None:
        """The trigger resolved: clear the rule's open alert for the key, run `on_clear`."""
        alert = self.alerts.pop((r.id, key[0], key[1]), None)
        if alert is not None:
            severity, message = alert[0], alert[1]
            self.out.append(
                AlertChange(
                    r.id,
                    key[0],
                    key[1],
                    t,
                    severity,
                    "cleared",
                    message,
                    event.value,
                    event.event_id,
                )
            )
        for step in r.clear_steps:
            self._emit(r, step, event, t)

    def pause(self, r: RuleActions, key: Key, paused: Paused) -> None:
        """Keep a sequence paused at a `delay` until its time comes (also when restored)."""
        r.running[key] = paused
        self.timers.at(paused.due, self, key, (r, paused))

    def on_timer(self, key: Key, due: float, arg: Any) -> None:
        r, paused = arg
        if r.running.get(key) is not paused:
            return  # restarted or replaced since it paused
        self._run_steps(r, key, paused.event, paused.step, due, paused.queue, due)

    def _run_steps(
        self,
        r: RuleActions,
        key: Key,
        event: Event,
        start: int,
        at: float,
        queue: list[Event],
        since: float,
    ) -> None:
        """Run steps from `start`, emitting at `at`; a `delay` counts from `since` (the
        gateway's clock)."""
        while True:
            steps = r.steps
            for index in range(start, len(steps)):
                step = steps[index]
                if step.kind == "delay":
                    self.pause(r, key, Paused(event, index + 1, since + step.seconds, queue))
                    return
                self._emit(r, step, event, at)
            r.running.pop(key, None)
            if not queue:
                return
            event = queue.pop(0)
            start = 0
            at = max(at, event.time)

    def _emit(self, r: RuleActions, step: Step, event: Event, at: float) -> None:
        kind = step.kind
        device = event.device
        if kind == "mqtt":
            spec = step.spec
            topic, payload = step.templates
            assert topic is not None and payload is not None
            try:
                rendered = topic.render_topic(event)
            except ValueError as exc:
                self.stats.commands_refused += 1
                logger.warning("rule %s, device %r: %s", r.id, device, exc)
                return
            command = Command(
                r.id, device, at, rendered, payload.render(event), spec.qos, spec.retain
            )
            self.out.append(command)
            if self.send is not None:
                self.send(command)
        elif kind == "alert":
            key = (r.id, device, event.metric)
            if key in self.alerts:
                return  # already raised and not cleared: no duplicate alert
            template = step.templates[0]
            assert template is not None
            message = template.render(event)
            self.alerts[key] = [step.spec.severity, message, at]
            self.out.append(
                AlertChange(
                    r.id,
                    device,
                    event.metric,
                    at,
                    step.spec.severity,
                    "raised",
                    message,
                    event.value,
                    event.event_id,
                )
            )
        elif kind == "webhook":
            spec = step.spec
            template = step.templates[0]
            body = (
                template.render(event)
                if template is not None
                else orjson.dumps(event.as_dict()).decode()
            )
            self.out.append(
                WebhookCall(
                    r.id, device, at, spec.url, spec.method, dict(spec.headers), body, spec.timeout
                )
            )
        elif kind == "log":
            template = step.templates[0]
            assert template is not None
            self.out.append(LogLine(r.id, device, at, step.spec.level, template.render(event)))
