"""What the engine emits (commands, alert changes, webhook calls, log lines) and the templates
that fill topics, payloads and messages from the triggering event."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
TEMPLATE_NAMES = ("device", "metric", "value", "text", "state", "rule", "time", "topic")
_TOPIC_UNSAFE = frozenset("/+#\0")  # a level separator, wildcards, and NUL (MQTT refuses it)


@dataclass(slots=True, frozen=True)
class Event:
    """What a rule fired (or cleared) on: the reading, or the moment a timer ran out."""

    rule_id: str
    device: str
    metric: str
    time: float  # event time, epoch seconds
    value: float | None
    text: str | None
    topic: str | None = None
    tags: str | None = None  # JSON object
    event_id: str | None = None  # the reading's id, when a reading fired it

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "device": self.device,
            "metric": self.metric,
            "time": self.time,
            "value": self.value,
            "text": self.text,
            "topic": self.topic,
            "tags": self.tags,
            "event_id": self.event_id,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        return cls(**data)


@dataclass(slots=True, frozen=True)
class Command:
    """Publish an MQTT message."""

    rule_id: str
    device: str
    time: float
    topic: str
    payload: str
    qos: int
    retain: bool


@dataclass(slots=True, frozen=True)
class AlertChange:
    """An alert raised or cleared; stored in the buffer's alerts table and shipped upstream."""

    rule_id: str
    device: str
    metric: str
    time: float
    severity: str
    state: Literal["raised", "cleared"]
    message: str
    value: float | None
    reading_event_id: str | None


@dataclass(slots=True, frozen=True)
class WebhookCall:
    rule_id: str
    device: str
    time: float
    url: str
    method: str
    headers: dict[str, str]
    body: str
    timeout: float


@dataclass(slots=True, frozen=True)
class LogLine:
    rule_id: str
    device: str
    time: float
    level: str
    message: str


Output = Command | AlertChange | WebhookCall | LogLine


def format_value(value: float | None) -> str:
    """A number for templates: integers without `.0`, others to at most 3 decimals."""
    if value is None:
        return ""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def iso_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


class Template:
    """`{name}` placeholders filled from an event; `{{` and `}}` are literal braces.

    Only known names are accepted (checked when the rule is loaded): no attribute access, no
    indexing, no code. `tag_<name>` reads a tag of the reading.
    """

    __slots__ = ("_parts", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        parts: list[tuple[bool, str]] = []  # (is_name, text)
        pos = 0
        for match in _PLACEHOLDER.finditer(source):
            parts.append((False, source[pos : match.start()]))
            token = match.group(0)
            if token in ("{{", "}}"):
                parts.append((False, token[0]))
            else:
                name = match.group(1).strip()
                if name not in TEMPLATE_NAMES and not (name.startswith("tag_") and len(name) > 4):
                    raise ValueError(
                        f"unknown placeholder {{{name}}}; use one of "
                        + ", ".join(f"{{{n}}}" for n in TEMPLATE_NAMES)
                        + " or {tag_<name>}"
                    )
                parts.append((True, name))
            pos = match.end()
        rest = source[pos:]
        if "{" in rest or "}" in rest:
            raise ValueError("unbalanced brace; write {{ or }} for a literal brace")
        parts.append((False, rest))
        self._parts = tuple(p for p in parts if p[0] or p[1])

    def render_topic(self, event: Event) -> str:
        """`render` for an MQTT topic: no filled-in value may add a level or a wildcard.

        Device and metric names come from the field (topic levels, payload keys); a name like
        `a/../b` or `#` would otherwise steer a command to another device's topic.
        """
        for is_name, name in self._parts:
            if not is_name:
                continue
            value = Template("{" + name + "}").render(event)
            unsafe = sorted({c for c in value if c in _TOPIC_UNSAFE})
            if unsafe or not value:
                holds = "holds " + " ".join(repr(c) for c in unsafe) if unsafe else "is empty"
                raise ValueError(
                    f"topic {self.source!r}: {{{name}}} = {value[:60]!r} {holds}, which would "
                    "send the command to another topic; not sent"
                )
        return self.render(event)

    def render(self, event: Event) -> str:
        out = []
        tags: dict[str, Any] | None = None
        for is_name, text in self._parts:
            if not is_name:
                out.append(text)
            elif text == "device":
                out.append(event.device)
            elif text == "metric":
                out.append(event.metric)
            elif text == "value":
                out.append(
                    format_value(event.value) if event.value is not None else event.text or ""
                )
            elif text == "text":
                out.append(event.text or "")
            elif text == "state":
                out.append(event.text if event.text is not None else format_value(event.value))
            elif text == "rule":
                out.append(event.rule_id)
            elif text == "time":
                out.append(iso_time(event.time))
            elif text == "topic":
                out.append(event.topic or "")
            else:
                if tags is None:
                    tags = orjson.loads(event.tags) if event.tags else {}
                out.append(str(tags.get(text[4:], "")))
        return "".join(out)
