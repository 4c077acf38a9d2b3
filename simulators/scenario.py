"""Scenario files: a fleet of devices, a timeline of events, faults and expectations, in YAML.

Times in a scenario are simulated: `start` is a UTC date and time, `at:`/`by:` are either a time
of day (`19:00`, `19:00:30`, on the start's day or the next) or an offset from the start (`+45s`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.config import format_validation_error
from gateway.errors import ConfigError
from gateway.units import Duration
from simulators.devices import PROFILES
from simulators.formats import FormatName

SCENARIO_DIR = Path(__file__).parent / "scenarios"
_TIME_OF_DAY = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")


def _quoted_time(at: Any) -> Any:
    if isinstance(at, int):
        # YAML 1.1 reads an unquoted 19:00 as the base-60 number 1140.
        raise ValueError('write times in quotes, e.g. at: "19:00" or at: "+30s"')
    return at


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DeviceGroup(_Model):
    """Devices of one profile: one per room in `rooms` (or `room`), `count` times each.

    `name` is a template: `{room}` and `{n}` (1-based) are filled in, so
    `{room}-climate` with rooms [kitchen, living] makes `kitchen-climate` and `living-climate`.
    """

    profile: str
    name: str
    room: str | None = None
    rooms: list[str] = Field(default_factory=list)
    count: int = Field(default=1, ge=1, le=100_000)
    format: FormatName = "gateway"
    interval: Duration = 60.0
    qos: Literal[0, 1, 2] | None = None
    retain: bool | None = None
    battery: bool | None = None
    node: str | None = None  # Sparkplug B edge node (default `<site>-edge`)
    params: dict[str, Any] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)  # format options, e.g. payload: json

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, profile: str) -> str:
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; one of {', '.join(sorted(PROFILES))}")
        return profile

    @field_validator("interval")
    @classmethod
    def _positive(cls, interval: float) -> float:
        if interval <= 0:
            raise ValueError("must be more than 0")
        return interval

    @model_validator(mode="after")
    def _unique_names(self) -> DeviceGroup:
        rooms = self.all_rooms()
        if len(rooms) > 1 and "{room}" not in self.name:
            raise ValueError(f"{self.name!r}: several rooms need {{room}} in the name")
        if self.count > 1 and "{n}" not in self.name:
            raise ValueError(f"{self.name!r}: count > 1 needs {{n}} in the name")
        return self

    def all_rooms(self) -> list[str]:
        return self.rooms or [self.room or "default"]

    def names(self) -> list[tuple[str, str]]:
        """(device name, room) for every device of the group."""
        return [
            (self.name.format(room=room, n=n), room)
            for room in self.all_rooms()
            for n in range(1, self.count + 1)
        ]


class TimelineEvent(_Model):
    """Something happens to a device at a time: `hallway-motion` `arrive`s at `19:00`."""

    at: str
    device: str
    action: str
    duration: Duration | None = Field(default=None, alias="for")
    value: float | str | None = None
    name: str | None = None

    @field_validator("at", mode="before")
    @classmethod
    def _quoted(cls, at: Any) -> Any:
        return _quoted_time(at)


class Expectation(_Model):
    """A message the gateway must publish: on `topic` (an MQTT filter), optionally with exactly
    `payload`, no earlier than `after` and no later than `by` (simulated time)."""

    topic: str
    by: str
    payload: str | None = None
    after: str | None = None
    name: str | None = None

    @field_validator("by", "after", mode="before")
    @classmethod
    def _quoted(cls, at: Any) -> Any:
        return _quoted_time(at)

    def describe(self) -> str:
        what = self.name or f"{self.topic}" + (f" = {self.payload}" if self.payload else "")
        return what


class FaultSpec(_Model):
    """A fault's rate and its knobs. `rate` means: for message faults the share of messages;
    `silent`/`burst` the chance per periodic report; `clock_skew` the share of devices;
    `reconnect_storm` storms per hour of simulated time."""

    rate: float = Field(ge=0.0)
    size: int | None = None  # oversized: bytes; burst: messages; reconnect_storm: connections
    seconds: float | None = None  # silent: for how long; clock_skew: up to how far off


class FaultsConfig(_Model):
    malformed_json: FaultSpec | None = None
    wrong_type: FaultSpec | None = None
    oversized: FaultSpec | None = None
    unknown_topic: FaultSpec | None = None
    duplicate: FaultSpec | None = None
    out_of_order: FaultSpec | None = None
    clock_skew: FaultSpec | None = None
    silent: FaultSpec | None = None
    burst: FaultSpec | None = None
    reconnect_storm: FaultSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_rates(cls, data: Any) -> Any:
        # `duplicate: 0.01` is short for `duplicate: {rate: 0.01}`.
        if isinstance(data, dict):
            return {k: {"rate": v} if isinstance(v, int | float) else v for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _message_rates(self) -> FaultsConfig:
        total = sum(
            spec.rate
            for spec in (
                self.malformed_json,
                self.wrong_type,
                self.oversized,
                self.unknown_topic,
                self.duplicate,
                self.out_of_order,
            )
            if spec is not None
        )
        if total > 1.0:
            raise ValueError("message fault rates add up to more than 1")
        return self


class Scenario(_Model):
    name: str
    description: str = ""
    site: str = "home"
    seed: int = 1
    start: datetime = datetime(2026, 1, 15, 18, 59, tzinfo=UTC)
    speed: float = Field(default=1.0, gt=0)
    duration: Duration = 600.0
    qos: Literal[0, 1, 2] = 1
    retain: bool = False
    timestamps: bool = False  # put the device's clock into payloads that can carry it
    fleet: list[DeviceGroup] = Field(min_length=1)
    timeline: list[TimelineEvent] = Field(default_factory=list)
    expect: list[Expectation] = Field(default_factory=list)
    faults: FaultsConfig = FaultsConfig()

    @field_validator("start")
    @classmethod
    def _utc(cls, start: datetime) -> datetime:
        return start if start.tzinfo else start.replace(tzinfo=UTC)

    @model_validator(mode="after")
    def _references(self) -> Scenario:
        devices: dict[str, str] = {}
        for group in self.fleet:
            for name, _room in group.names():
                if name in devices:
                    raise ValueError(f"device {name!r} is defined twice")
                devices[name] = group.profile
        for i, event in enumerate(self.timeline):
            profile = devices.get(event.device)
            if profile is None:
                raise ValueError(f"timeline.{i}: no device {event.device!r} in the fleet")
            if event.action not in PROFILES[profile].actions:
                known = ", ".join(PROFILES[profile].actions) or "none"
                raise ValueError(
                    f"timeline.{i}: {event.device} ({profile}) has no action "
                    f"{event.action!r} (actions: {known})"
                )
            self._check_time(f"timeline.{i}.at", event.at)
        for i, expectation in enumerate(self.expect):
            self._check_time(f"expect.{i}.by", expectation.by)
            if expectation.after:
                self._check_time(f"expect.{i}.after", expectation.after)
        return self

    def _check_time(self, where: str, text: str) -> None:
        try:
            self.time(text)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None

    @property
    def start_ts(self) -> float:
        return self.start.timestamp()

    def time(self, text: str) -> float:
        """Epoch seconds of a scenario time (`19:00`, `+45s`)."""
        text = text.strip()
        if text.startswith("+"):
            from gateway.units import parse_duration

            return self.start_ts + parse_duration(text[1:])
        match = _TIME_OF_DAY.match(text)
        if not match:
            raise ValueError(f"{text!r} is neither a time of day (19:00) nor an offset (+45s)")
        hour, minute, second = int(match[1]), int(match[2]), int(match[3] or 0)
        when = self.start.replace(hour=hour, minute=minute, second=second, microsecond=0)
        if when < self.start:
            when += timedelta(days=1)
        return when.timestamp()


def resolve(name_or_path: str | Path) -> Path:
    """A scenario file by path, or by name from the bundled `simulators/scenarios/`."""
    path = Path(name_or_path)
    if path.exists():
        return path
    bundled = SCENARIO_DIR / f"{name_or_path}.yaml"
    if bundled.exists():
        return bundled
    names = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml")))
    raise ConfigError(str(name_or_path), [f"no such file or bundled scenario (bundled: {names})"])


def parse_scenario(data: Any, source: str = "<scenario>") -> Scenario:
    if not isinstance(data, dict):
        raise ConfigError(source, ["(top level): must be a mapping"])
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, format_validation_error(exc)) from None


def load_scenario(name_or_path: str | Path) -> Scenario:
    path = resolve(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"YAML: {exc}"]) from None
    return parse_scenario(data, str(path))
