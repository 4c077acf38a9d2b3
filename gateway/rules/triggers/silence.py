"""The silence trigger: a device (or one of its selected metrics) sending nothing for `for`;
it clears on the next reading. Devices named exactly are watched before they first speak."""

from __future__ import annotations

from typing import Any

from gateway.rules.schema import Select, SilenceTrigger
from gateway.rules.triggers.base import Host, Key, Runner, TriggerContext, key_of


def known_keys(select: Select, by_metric: bool) -> list[Key]:
    """Devices (and metrics) named exactly, so silence can watch them before they speak."""
    if not select.device or any(any(c in d for c in "*?[") for d in select.device):
        return []
    if by_metric:
        if not select.metric or any(any(c in m for c in "*?[") for m in select.metric):
            return []
        return [(d, m) for d in select.device for m in select.metric]
    return [(d, "*") for d in select.device]


class SilenceRunner(Runner):
    """Fires when a key sends nothing for `for`; clears on the next reading (recovery).

    Devices named exactly in `select` (no wildcards) are watched from the engine's first tick,
    so a device that never reports is noticed too. With `metric` in `select` each metric is
    watched on its own; without it, any reading of the device counts.
    """

    kind = "silence"

    def __init__(
        self, rule: int, host: Host, spec: SilenceTrigger, context: TriggerContext
    ) -> None:
        super().__init__(rule, host, spec, context)
        self.quiet = spec.for_
        self.by_metric = context.select.metric is not None
        self.known = known_keys(context.select, self.by_metric)
        # key -> [last_seen, armed timer due or None, silent]
        self.seen: dict[Key, list[Any]] = {}
        # Watched from the gateway's clock before they spoke: the first reading restarts the
        # wait on the device's own time (which may run behind or ahead of the gateway's).
        self.unheard: set[Key] = set()

    def on_reading(self, key: Key, t: float, value: float | None, text: str | None) -> None:
        k = key if self.by_metric else (key[0], "*")
        entry = self.seen.get(k)
        if entry is None:
            entry = self.seen[k] = [t, None, False]
        elif k in self.unheard:
            self.unheard.discard(k)
            entry[0] = t
            if entry[1] is not None and t + self.quiet < entry[1]:
                entry[1] = None  # the timer armed from the gateway's clock is now too late
        elif t > entry[0]:
            entry[0] = t
        if entry[2]:
            entry[2] = False
            self.host.clear(self.rule, k, t, value, text)
        if entry[1] is None:
            due = entry[0] + self.quiet
            entry[1] = due
            self.host.at_watermark(due, self, k, None)

    def on_timer(self, key: Key, due: float, arg: Any) -> None:
        entry = self.seen.get(key)
        if entry is None or entry[1] != due:
            return
        deadline = entry[0] + self.quiet
        if deadline > due:  # heard from it meanwhile: wait again from the last reading
            entry[1] = deadline
            self.host.at_watermark(deadline, self, key, None)
            return
        entry[1] = None
        if not entry[2]:
            entry[2] = True
            self.host.fire(self.rule, key, due, None, None)

    def prime(self, clock: float) -> None:
        for key in self.known:
            if key not in self.seen:
                self.seen[key] = [clock, clock + self.quiet, False]
                self.unheard.add(key)
                self.host.at_watermark(clock + self.quiet, self, key, None)

    def snapshot(self) -> list[Any]:
        return [[k[0], k[1], e] for k, e in self.seen.items()]

    def restore(self, data: list[Any]) -> None:
        for item in data:
            key = key_of(item)
            entry = self.seen[key] = list(item[2])
            if entry[1] is not None:
                self.host.at_watermark(entry[1], self, key, None)
