"""The sun trigger: sunrise or sunset (+ offset) at the gateway's location."""

from __future__ import annotations

from gateway.rules.schema import SunTrigger
from gateway.rules.sun import next_sun_event
from gateway.rules.triggers.base import Host, TriggerContext, TriggerError
from gateway.rules.triggers.clock import ClockRunner


class SunRunner(ClockRunner):
    """Fires at each sunrise or sunset, moved by the offset; needs the gateway's location."""

    def __init__(self, rule: int, host: Host, spec: SunTrigger, context: TriggerContext) -> None:
        if context.latitude is None:
            raise TriggerError(
                "a `sun` trigger needs latitude and longitude in the gateway config's `location:`"
            )
        assert context.longitude is not None  # the config takes both or neither
        super().__init__(rule, host, spec, context)
        self.event = spec.event
        self.offset = spec.offset
        self.latitude: float = context.latitude
        self.longitude: float = context.longitude

    def next_after(self, t: float) -> float | None:
        return next_sun_event(t, self.event, self.offset, self.latitude, self.longitude, self.zone)
