"""The state trigger: the state changing to (and/or from) given values, optionally held for
`for`; a device republishing the same state is not a change."""

from __future__ import annotations

from typing import Any

from gateway.rules.conditions import normalize_expected, normalize_state
from gateway.rules.schema import AvailabilityTrigger, StateTrigger
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


class _StateMachine:
    __slots__ = ("deadline", "last_t", "open", "phase", "state")

    def __init__(self) -> None:
        self.state: str | None = None
        self.last_t = float("-inf")
        self.phase = IDLE
        self.deadline = 0.0
        self.open = False


class StateRunner(Runner):
    """Fires when the state changes to (and/or from) given values, optionally held for `for`."""

    kind = "state"

    def __init__(self, rule: int, host: Host, spec: StateTrigger, context: TriggerContext) -> None:
        super().__init__(rule, host, spec, context)
        self.to = frozenset(normalize_expected(v) for v in spec.to) if spec.to else None
        self.from_ = frozenset(normalize_expected(v) for v in spec.from_) if spec.from_ else None
        self.hold = spec.for_
        self.states: dict[Key, _StateMachine] = {}

    def on_reading(self, key: Key, t: float, value: float | None, text: str | None) -> None:
        st = self.states.get(key)
        if st is None:
            st = self.states[key] = _StateMachine()
        state = normalize_state(value, text)
        to = self.to
        if t < st.last_t:
            pending = st.phase == PENDING and st.deadline - self.hold <= t < st.deadline
            if pending and to is not None and state not in to:
                st.phase = IDLE
            return
        st.last_t = t
        previous, st.state = st.state, state
        if state == previous:
            return  # a device republishing its state is not a change
        matches = (to is None or state in to) and (
            self.from_ is None or (previous is not None and previous in self.from_)
        )
        if matches:
            if self.hold:
                st.phase = PENDING
                st.deadline = t + self.hold
                self.host.at_watermark(st.deadline, self, key, None)
            else:
                st.phase = ACTIVE
                if self.host.fire(self.rule, key, t, value, text):
                    st.open = True
                return
        else:
            st.phase = IDLE
        if st.open and not matches:
            st.open = False
            self.host.clear(self.rule, key, t, value, text)

    def on_timer(self, key: Key, due: float, arg: Any) -> None:
        st = self.states.get(key)
        if st is None or st.phase != PENDING or st.deadline != due:
            return
        st.phase = ACTIVE
        value = None
        if self.host.fire(self.rule, key, due, value, st.state):
            st.open = True

    def snapshot(self) -> list[Any]:
        return [
            [
                k[0],
                k[1],
                [
                    st.state,
                    st.last_t if st.last_t != float("-inf") else None,
                    st.phase,
                    st.deadline,
                    st.open,
                ],
            ]
            for k, st in self.states.items()
        ]

    def restore(self, data: list[Any]) -> None:
        for item in data:
            key = key_of(item)
            st = self.states[key] = _StateMachine()
            st.state, last_t, st.phase, st.deadline, st.open = item[2]
            st.last_t = float("-inf") if last_t is None else last_t
            if st.phase == PENDING:
                self.host.at_watermark(st.deadline, self, key, None)


class AvailabilityRunner(StateRunner):
    """A state trigger on the `availability` reading (the rule selects only that metric)."""

    kind = "availability"

    def __init__(
        self, rule: int, host: Host, spec: AvailabilityTrigger, context: TriggerContext
    ) -> None:
        state = StateTrigger.model_validate({"type": "state", "to": [spec.to], "for": spec.for_})
        super().__init__(rule, host, state, context)
