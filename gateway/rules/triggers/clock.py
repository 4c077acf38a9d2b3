"""What the schedule and sun triggers share: armed on the engine's clock (not the watermark)
for the next time they name, and a misfire grace for a time missed while the gateway was down."""

from __future__ import annotations

from typing import Any

from gateway.rules.triggers.base import Host, Key, Runner, TriggerContext

TIME_KEY: Key = ("", "")


class ClockRunner(Runner):
    """Fires at the times `next_after` names, in the gateway's time zone; saves the next one."""

    kind = "time"

    def __init__(self, rule: int, host: Host, spec: Any, context: TriggerContext) -> None:
        super().__init__(rule, host, spec, context)
        self.zone = context.zone
        self.grace = context.misfire_grace
        self.due: float | None = None
        self.missed = 0
        self.restored = False  # the armed time came from a snapshot (the gateway was down)

    def next_after(self, t: float) -> float | None:
        """The first firing time after `t`; None when there is none."""
        raise NotImplementedError

    def _arm(self, after: float) -> None:
        self.due = self.next_after(after)
        if self.due is not None:
            self.host.at_clock(self.due, self, TIME_KEY, None)

    def prime(self, clock: float) -> None:
        if self.due is None:
            self._arm(clock)

    def on_timer(self, key: Key, due: float, arg: Any) -> None:
        if due != self.due:
            return
        clock = self.host.clock
        if self.restored and clock - due > self.grace:
            # Missed while the gateway was down: do not fire hours late; go to the next one.
            self.missed += 1
            self.restored = False
            self._arm(clock)
            return
        self.restored = False
        self._arm(due)
        self.host.fire(self.rule, TIME_KEY, due, None, None)

    def snapshot(self) -> list[Any]:
        return [self.due]

    def restore(self, data: list[Any]) -> None:
        if data and data[0] is not None:
            self.due = float(data[0])
            self.restored = True
            self.host.at_clock(self.due, self, TIME_KEY, None)
