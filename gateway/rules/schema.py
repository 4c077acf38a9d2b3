"""Rule files: pydantic models mirroring the YAML, and a loader whose errors name file, rule, field.

A rule file holds `rules:`, a list of rules. Each rule has an `id`, a `select` (which readings
it sees), one `trigger`, optional `conditions` (all must hold), `actions` (run when it fires)
and `on_clear` (run when it resolves). Triggers are a union tagged by `type`; conditions and
actions are one-key mappings (`- mqtt: {...}`, `- any: [...]`) so the YAML reads naturally.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.errors import RuleError
from gateway.topics import validate_filter, validate_publish_topic
from gateway.units import Duration, parse_duration
from gateway.yamlfile import YamlFileError, read_yaml_file

RULE_ID = r"^[A-Za-z0-9_.:-]+$"


def _signed_duration(text: Any) -> float:
    """`-30m`, `+1h`, `90s`: a duration that may be negative (sun offsets)."""
    if isinstance(text, str) and text.strip().startswith(("-", "+")):
        stripped = text.strip()
        seconds = parse_duration(stripped[1:])
        return -seconds if stripped[0] == "-" else seconds
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    return parse_duration(text)


SignedDuration = Annotated[float, BeforeValidator(_signed_duration)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _names(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Names = Annotated[list[str], BeforeValidator(_names)]
"""One name or a list of names; `*` and `?` match like shell globs."""


class Select(_Model):
    """Which readings a rule sees; every given field must match. Empty selects everything."""

    topic: str | None = None  # MQTT filter: sensors/+/hallway-motion/#
    device: Names | None = None
    metric: Names | None = None
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("topic")
    @classmethod
    def _filter(cls, topic: str | None) -> str | None:
        return None if topic is None else validate_filter(topic)


class Level(_Model):
    """A numeric level: exactly one of above / below / outside / inside (strict comparisons)."""

    above: float | None = None
    below: float | None = None
    outside: tuple[float, float] | None = None
    inside: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Level:
        given = [k for k in ("above", "below", "outside", "inside") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of above, below, outside, inside"
                + (f" (got {', '.join(given)})" if given else "")
            )
        for key in ("outside", "inside"):
            pair = getattr(self, key)
            if pair is not None and not pair[0] < pair[1]:
                raise ValueError(f"{key}: the low bound must be below the high bound")
        return self


class Deadband(_Model):
    """Report by exception (Node-RED rbe): ignore a reading closer than `gap` to the reference."""

    gap: float = Field(gt=0)
    percent: bool = False  # gap is a percentage of the reference value
    against: Literal["last_output", "last_input"] = "last_output"


class ThresholdTrigger(Level):
    type: Literal["threshold"]
    for_: Duration = Field(default=0.0, alias="for")
    hysteresis: float = Field(default=0.0, ge=0)
    deadband: Deadband | None = None
    clear: Level | None = None  # resolves the alert; default: back across the threshold


StateValue = str | bool | int | float


def _state_values(value: Any) -> Any:
    if value is None:
        return None
    return value if isinstance(value, list) else [value]


StateValues = Annotated[list[StateValue] | None, BeforeValidator(_state_values)]


class StateTrigger(_Model):
    type: Literal["state"]
    to: StateValues = None
    from_: StateValues = Field(default=None, alias="from")
    for_: Duration = Field(default=0.0, alias="for")


class AvailabilityTrigger(_Model):
    """Fires when a device goes offline (or online, with `to: online`), held for `for`: the
    `availability` reading every format's online/offline message becomes (docs/ingest-formats.md).
    It sees `availability` readings only; `silence` covers devices that just stop."""

    type: Literal["availability"]
    to: Literal["online", "offline"] = "offline"
    for_: Duration = Field(default=0.0, alias="for")


class RateTrigger(Level):
    """Fires when the change per `per` over the last `window` crosses the level."""

    type: Literal["rate"]
    window: Duration = Field(gt=0)
    per: Duration = Field(default=60.0, gt=0)
    hysteresis: float = Field(default=0.0, ge=0)


class SilenceTrigger(_Model):
    """Fires when a device (or one of its selected metrics) sends nothing for `for`."""

    type: Literal["silence"]
    for_: Duration = Field(alias="for", gt=0)


class WindowTrigger(Level):
    """Aggregates readings over a window and fires when the aggregate crosses the level."""

    type: Literal["window"]
    kind: Literal["tumbling", "hopping", "sliding"]
    size: Duration = Field(gt=0)
    hop: Duration | None = Field(default=None, gt=0)
    agg: Literal["avg", "min", "max", "sum", "count"] = "avg"
    group: Literal["device", "all"] = "device"
    hysteresis: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _hop(self) -> WindowTrigger:
        if self.kind == "hopping" and self.hop is None:
            raise ValueError("a hopping window needs `hop`")
        if self.kind != "hopping" and self.hop is not None:
            raise ValueError("`hop` applies to hopping windows only")
        return self


class ScheduleTrigger(_Model):
    type: Literal["schedule"]
    cron: str  # minute hour day-of-month month day-of-week, in the gateway's time zone

    @field_validator("cron")
    @classmethod
    def _cron(cls, cron: str) -> str:
        from gateway.rules.schedule import parse_cron

        parse_cron(cron)  # raises ValueError with the bad field
        return cron


class SunTrigger(_Model):
    type: Literal["sun"]
    event: Literal["sunrise", "sunset"]
    offset: SignedDuration = 0.0


Trigger = Annotated[
    ThresholdTrigger
    | StateTrigger
    | AvailabilityTrigger
    | RateTrigger
    | SilenceTrigger
    | WindowTrigger
    | ScheduleTrigger
    | SunTrigger,
    Field(discriminator="type"),
]

# -- conditions -------------------------------------------------------------------------------


class StateCondition(_Model):
    """Another device's latest reading: a level, or equal to one of `is`."""

    device: str
    metric: str
    above: float | None = None
    below: float | None = None
    is_: StateValues = Field(default=None, alias="is")
    max_age: Duration | None = None  # older readings count as unknown

    @model_validator(mode="after")
    def _something(self) -> StateCondition:
        if self.above is None and self.below is None and self.is_ is None:
            raise ValueError("give above, below or is")
        return self


_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?$")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class TimeCondition(_Model):
    """A time-of-day window in the gateway's time zone; `after` > `before` spans midnight."""

    after: str | None = None
    before: str | None = None
    weekdays: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = None

    @field_validator("after", "before")
    @classmethod
    def _clock(cls, value: str | None) -> str | None:
        if value is not None and not _HHMM.match(value):
            raise ValueError(f"{value!r} is not a time of day (HH:MM or HH:MM:SS)")
        return value

    @model_validator(mode="after")
    def _something(self) -> TimeCondition:
        if self.after is None and self.before is None and self.weekdays is None:
            raise ValueError("give after, before or weekdays")
        return self


class SunCondition(_Model):
    """After sunset / before sunrise (with offsets); both given: the night in between."""

    after: Literal["sunrise", "sunset"] | None = None
    after_offset: SignedDuration = 0.0
    before: Literal["sunrise", "sunset"] | None = None
    before_offset: SignedDuration = 0.0

    @model_validator(mode="after")
    def _something(self) -> SunCondition:
        if self.after is None and self.before is None:
            raise ValueError("give after or before")
        return self


class Condition(_Model):
    """One condition: exactly one key of all / any / not / state / time / sun / expr."""

    all: list[Condition] | None = None
    any: list[Condition] | None = None
    not_: Condition | None = Field(default=None, alias="not")
    state: StateCondition | None = None
    time: TimeCondition | None = None
    sun: SunCondition | None = None
    expr: str | None = None  # CEL, compiled once

    @model_validator(mode="after")
    def _exactly_one(self) -> Condition:
        given = [k for k, v in self if v is not None]
        if len(given) != 1:
            raise ValueError(
                "a condition is exactly one of all, any, not, state, time, sun, expr"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.expr is not None:
            from gateway.rules.expressions import compile_expression

            compile_expression(self.expr)  # raises ValueError with CEL's message
        return self


# -- actions ----------------------------------------------------------------------------------


def _template(text: str | None) -> str | None:
    if text is not None:
        from gateway.rules.actions import Template

        Template(text)  # raises ValueError naming the bad placeholder
    return text


TemplateText = Annotated[str, AfterValidator(_template)]
"""Text with `{device}`, `{metric}`, `{value}`, `{text}`, `{state}`, `{rule}`, `{time}`,
`{topic}` and `{tag_<name>}` placeholders."""


class MqttAction(_Model):
    topic: TemplateText
    payload: TemplateText = "{value}"
    qos: Literal[0, 1, 2] = 1
    retain: bool = False

    @field_validator("topic")
    @classmethod
    def _no_wildcards(cls, topic: str) -> str:
        return validate_publish_topic(topic)


class AlertAction(_Model):
    severity: Literal["info", "warning", "critical"] = "warning"
    message: TemplateText = "{rule} on {device}: {value}"


class WebhookAction(_Model):
    url: str
    method: Literal["POST", "PUT"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    body: TemplateText | None = None  # default: the event as JSON
    timeout: Duration = 5.0

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url


class LogAction(_Model):
    message: TemplateText
    level: Literal["debug", "info", "warning", "error"] = "info"


class Action(_Model):
    """One step: exactly one of mqtt / alert / webhook / log / delay."""

    mqtt: MqttAction | None = None
    alert: AlertAction | None = None
    webhook: WebhookAction | None = None
    log: LogAction | None = None
    delay: Duration | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Action:
        given = [k for k, v in self if v is not None]
        if len(given) != 1:
            raise ValueError(
                "an action is exactly one of mqtt, alert, webhook, log, delay"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


class Rule(_Model):
    id: str = Field(pattern=RULE_ID)
    description: str = ""
    enabled: bool = True
    select: Select = Select()
    trigger: Trigger
    conditions: list[Condition] = Field(default_factory=list)
    actions: list[Action] = Field(min_length=1)
    on_clear: list[Action] = Field(default_factory=list)
    cooldown: Duration = 0.0
    mode: Literal["ignore", "restart", "queue"] = "ignore"
    max_queued: int = Field(default=10, ge=1, le=1000)

    @model_validator(mode="before")
    @classmethod
    def _availability_selects_its_metric(cls, data: Any) -> Any:
        """An availability trigger sees the `availability` readings of the selected devices."""
        if not isinstance(data, dict):
            return data
        trigger = data.get("trigger")
        if not isinstance(trigger, dict) or trigger.get("type") != "availability":
            return data
        select = data.get("select") or {}
        if not isinstance(select, dict):
            return data
        if select.get("metric") not in (None, "availability", ["availability"]):
            raise ValueError(
                "an availability trigger reads the metric `availability`: drop select.metric"
            )
        return {**data, "select": {**select, "metric": "availability"}}

    @field_validator("on_clear")
    @classmethod
    def _no_delay_on_clear(cls, steps: list[Action]) -> list[Action]:
        if any(step.delay is not None for step in steps):
            raise ValueError("`delay` is not allowed in on_clear (clear actions run at once)")
        return steps


class RuleFile(_Model):
    rules: list[Rule] = Field(default_factory=list)


# -- loading ----------------------------------------------------------------------------------


class LoadedRule:
    """A validated rule and the file it came from (for messages and backtests)."""

    __slots__ = ("rule", "source")

    def __init__(self, rule: Rule, source: str) -> None:
        self.rule = rule
        self.source = source


def rule_error(source: str, problems: list[str]) -> RuleError:
    error = RuleError(f"{source}: invalid rules\n" + "\n".join(f"  {p}" for p in problems))
    error.problems = problems  # type: ignore[attr-defined]
    return error


def _problems(error: ValidationError, data: Any) -> list[str]:
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        loc = list(item["loc"])
        where = "(top level)"
        if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
            index = loc[1]
            rule_id: Any = None
            with contextlib.suppress(KeyError, IndexError, TypeError, AttributeError):
                rule_id = data["rules"][index].get("id")
            name = f"rule {rule_id!r}" if rule_id else f"rule #{index + 1}"
            field = ".".join(str(p) for p in loc[2:]) or "(the rule)"
            where = f"{name}: {field}"
        elif loc:
            where = ".".join(str(p) for p in loc)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{where}: {message}")
    return problems


def parse_rule_file(data: Any, source: str) -> list[LoadedRule]:
    """Validate parsed YAML; raises RuleError listing every problem with rule id and field."""
    if data is None:
        return []
    if not isinstance(data, dict):
        raise rule_error(source, ["(top level): must be a mapping with a `rules:` list"])
    try:
        parsed = RuleFile.model_validate(data)
    except ValidationError as exc:
        raise rule_error(source, _problems(exc, data)) from None
    seen: set[str] = set()
    problems = []
    for rule in parsed.rules:
        if rule.id in seen:
            problems.append(f"rule {rule.id!r}: id: appears twice in this file")
        seen.add(rule.id)
    if problems:
        raise rule_error(source, problems)
    return [LoadedRule(rule, source) for rule in parsed.rules]


def load_rule_file(path: Path | str) -> list[LoadedRule]:
    path = Path(path)
    try:
        data = read_yaml_file(path)
    except YamlFileError as exc:
        raise rule_error(str(path), [exc.problem]) from None
    return parse_rule_file(data, str(path))


def load_rule_files(paths: list[Path]) -> list[LoadedRule]:
    """Every rule of every file; ids must be unique across files. Reports all files' problems."""
    loaded: list[LoadedRule] = []
    errors: list[str] = []
    for path in paths:
        try:
            loaded.extend(load_rule_file(path))
        except RuleError as exc:
            errors.append(str(exc))
    where: dict[str, str] = {}
    for item in loaded:
        first = where.setdefault(item.rule.id, item.source)
        if first != item.source:
            errors.append(f"{item.source}: rule {item.rule.id!r}: id: already defined in {first}")
    if errors:
        error = RuleError("\n".join(errors))
        raise error
    return loaded
