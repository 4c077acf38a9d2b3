"""The schedule trigger: a cron expression in the gateway's time zone."""

from __future__ import annotations

from gateway.rules.schedule import next_cron_time, parse_cron
from gateway.rules.schema import ScheduleTrigger
from gateway.rules.triggers.base import Host, TriggerContext
from gateway.rules.triggers.clock import ClockRunner


class ScheduleRunner(ClockRunner):
    """Fires at each time the cron expression names (minute hour day-of-month month weekday)."""

    def __init__(
        self, rule: int, host: Host, spec: ScheduleTrigger, context: TriggerContext
    ) -> None:
        super().__init__(rule, host, spec, context)
        self.cron = parse_cron(spec.cron)

    def next_after(self, t: float) -> float | None:
        return next_cron_time(self.cron, t, self.zone)
