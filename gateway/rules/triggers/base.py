"""What every trigger runner shares: the host it talks to, keys and phases, and the base class.

A runner is built from its rule's index, the host (the engine), the trigger spec of its type and
a `TriggerContext`, so the registry can build any of them the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from gateway.rules.schema import Select

Key = tuple[str, str]  # (device, metric); ("*", "*") for a group, ("", "") for time triggers
GROUP_KEY: Key = ("*", "*")  # the key of a window across devices (on the group timeline)
Predicate = Callable[[float], bool]

IDLE, PENDING, ACTIVE = 0, 1, 2  # armed / crossing seen, waiting out `for` / fired


class Host(Protocol):
    """What a runner may ask of the engine."""

    clock: float  # the gateway's clock: the latest arrival time or tick seen

    def fire(self, rule: int, key: Key, t: float, value: float | None, text: str | None) -> bool:
        """Run the rule's actions if conditions and cooldown allow; True when they ran."""
        ...

    def clear(
        self, rule: int, key: Key, t: float, value: float | None, text: str | None
    ) -> None: ...

    def at_watermark(self, due: float, runner: Runner, key: Key, arg: Any) -> None:
        """Call `runner.on_timer` once the watermark of the key's timeline (its device's clock
        minus the allowed lateness; the group timeline for GROUP_KEY) reaches due."""
        ...

    def at_clock(self, due: float, runner: Runner, key: Key, arg: Any) -> None:
        """Call `runner.on_timer` once the gateway's clock reaches due (schedules)."""
        ...


@dataclass(frozen=True, slots=True)
class TriggerContext:
    """What a runner may need besides its spec: its rule's select, and the gateway's place."""

    select: Select
    zone: ZoneInfo
    latitude: float | None
    longitude: float | None
    misfire_grace: float


class TriggerError(ValueError):
    """The trigger cannot run with this gateway's config; the compiler names file and rule."""


def key_of(data: list[Any]) -> Key:
    """The key at the head of a saved per-key entry."""
    return (str(data[0]), str(data[1]))


class Runner:
    """Base of the trigger runners."""

    kind = "?"
    group = False  # sees readings of many devices as one key, on the group timeline

    def __init__(self, rule: int, host: Host, spec: Any, context: TriggerContext) -> None:
        self.rule = rule
        self.host = host
        self.non_numeric = 0

    def on_reading(self, key: Key, t: float, value: float | None, text: str | None) -> None:
        """A selected reading; `key` is (device, metric)."""

    def on_timer(self, key: Key, due: float, arg: Any) -> None:
        """A timer armed through the host ran out."""

    def prime(self, clock: float) -> None:
        """Called once, the first time the engine knows what time it is."""

    def snapshot(self) -> list[Any]:
        return []

    def restore(self, data: list[Any]) -> None:
        """Load a snapshot and re-arm its timers through the host."""
