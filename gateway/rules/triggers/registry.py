"""The trigger types a rule may name, each with the runner class that runs it."""

from __future__ import annotations

from gateway.rules.schema import Trigger
from gateway.rules.triggers.base import Host, Runner, TriggerContext
from gateway.rules.triggers.rate import RateRunner
from gateway.rules.triggers.schedule import ScheduleRunner
from gateway.rules.triggers.silence import SilenceRunner
from gateway.rules.triggers.state import AvailabilityRunner, StateRunner
from gateway.rules.triggers.sun import SunRunner
from gateway.rules.triggers.threshold import ThresholdRunner
from gateway.rules.triggers.window import WindowRunner

# `trigger.type` -> runner; each takes (rule index, host, its trigger spec, TriggerContext).
RUNNERS: dict[str, type[Runner]] = {
    "threshold": ThresholdRunner,
    "state": StateRunner,
    "availability": AvailabilityRunner,
    "rate": RateRunner,
    "silence": SilenceRunner,
    "window": WindowRunner,
    "schedule": ScheduleRunner,
    "sun": SunRunner,
}


def build_runner(rule: int, host: Host, spec: Trigger, context: TriggerContext) -> Runner:
    """The runner for a validated trigger spec; raises TriggerError when the gateway's config
    cannot run it (a `sun` trigger without a location)."""
    return RUNNERS[spec.type](rule, host, spec, context)
