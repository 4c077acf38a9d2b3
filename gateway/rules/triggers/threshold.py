"""The threshold trigger: a value crossing into a level, optionally held for `for`, with
hysteresis, a deadband (report by exception) and its own clear level."""

from __future__ import annotations

from typing import Any

from gateway.rules.conditions import UNKNOWN_STATES
from gateway.rules.schema import ThresholdTrigger
from gateway.rules.triggers.base import (
    ACTIVE,
    IDLE,
    PENDING,
    Host,
    Key,
    Runner,
    TriggerContext,
    key_of,
)
from gateway.rules.triggers.crossing import Crossing, level_predicates


class ThresholdRunner(Runner):
    """Fires when a value crosses into the level (armed flag per key), optionally after `for`."""

    kind = "threshold"

    def __init__(
        self, rule: int, host: Host, spec: ThresholdTrigger, context: TriggerContext
    ) -> None:
        super().__init__(rule, host, spec, context)
        self.on, self.off = level_predicates(spec, spec.hysteresis)
        self.clear_when = level_predicates(spec.clear)[0] if spec.clear is not None else None
        self.hold = spec.for_
        self.deadband = spec.deadband
        self.states: dict[Key, Crossing] = {}

    def on_reading(self, key: Key, t: float, value: float | None, text: str | None) -> None:
        st = self.states.get(key)
        if st is None:
            st = self.states[key] = Crossing()
        if value is None:
            if text is None or text.strip().lower() in UNKNOWN_STATES:
                if t >= st.last_t:  # unknown/unavailable re-arms, as Home Assistant does
                    st.last_t = t
                    st.phase = IDLE
            else:
                self.non_numeric += 1
            return
        if t < st.last_t:
            # Out of order (within the allowed lateness): it may prove a pending `for` broken,
            # but it never moves the current state backwards.
            if st.phase == PENDING and st.since <= t < st.deadline and self.off(value):
                st.phase = IDLE
            return
        st.last_t = t
        band = self.deadband
        if band is not None:
            ref = st.ref if band.against == "last_output" else st.last_in
            st.last_in = value
            if ref is not None:
                gap = abs(ref) * band.gap / 100.0 if band.percent else band.gap
                if abs(value - ref) < gap:
                    return
            st.ref = value
        phase = st.phase
        if phase == IDLE:
            if self.on(value):
                if self.hold:
                    st.phase = PENDING
                    st.since = t
                    st.deadline = t + self.hold
                    st.value = value
                    self.host.at_watermark(st.deadline, self, key, None)
                else:
                    st.phase = ACTIVE
                    st.value = value
                    if self.host.fire(self.rule, key, t, value, text):
                        st.open = True
        elif phase == PENDING:
            if self.off(value):  # the first reading back across cancels the `for`
                st.phase = IDLE
        elif self.off(value):
            st.phase = IDLE
        if st.open:
            done = self.clear_when(value) if self.clear_when is not None else self.off(value)
            if done:
                st.open = False
                self.host.clear(self.rule, key, t, value, text)

    def on_timer(self, key: Key, due: float, arg: Any) -> None:
        st = self.states.get(key)
        if st is None or st.phase != PENDING or st.deadline != due:
            return  # cancelled or re-armed since
        st.phase = ACTIVE
        if self.host.fire(self.rule, key, due, st.value, None):
            st.open = True

    def snapshot(self) -> list[Any]:
        return [[k[0], k[1], st.dump()] for k, st in self.states.items()]

    def restore(self, data: list[Any]) -> None:
        for item in data:
            key = key_of(item)
            st = self.states[key] = Crossing.load(item[2])
            if st.phase == PENDING:
                self.host.at_watermark(st.deadline, self, key, None)
