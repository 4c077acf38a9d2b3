"""Homie v3/v4 (`homie/<device>/...`): property values typed by their retained attributes.

A Homie device describes itself in retained attribute topics (levels starting with `$`) and
publishes each property's value on `homie/<device>/<node>/<property>`:

    homie/boiler/$state                          ready
    homie/boiler/heating/temperature/$datatype   float
    homie/boiler/heating/temperature/$unit       °C
    homie/boiler/heating/temperature             61.5

The route (`homie/{device}/{metric...}`) names the device and the levels after it; this decoder
tells them apart:

- `<node>/<property>` is a value: metric `<node>.<property>`, read by the property's `$datatype`
  (integer and float: a number; boolean: 1/0 with `true`/`false`; duration: seconds, unit `s`,
  the ISO 8601 text kept; string, enum, color, datetime: text) with its `$unit`. A value that
  does not fit its datatype is a DecodeError.
- `$state` (`ready`, `lost`, ...) is the device's availability (gateway/ingest/availability.py);
  v2's `$online` (`true`/`false`) too.
- `$stats/<name>` (v3, and v4's legacy-stats extension) are readings `$stats.<name>`: uptime in
  s, signal, cpuload and battery in %, cputemp in °C, freeheap in bytes, supply in V.
- `$datatype` and `$unit` of a property are remembered, not stored; every other attribute
  (`$homie`, `$name`, `$nodes`, `$properties`, `$settable`, `$format`, `$fw/...`, ...), the
  `set` command topic and the `$broadcast` channel yield nothing.

A value whose property's `$datatype` is not known yet (after a gateway restart the broker sends
the retained value before the attributes below it) is read untyped, as in
gateway/ingest/values.py (a number, true/false as 1/0, else text) with the `$unit` if known;
values after the attributes arrived are typed. The attributes live in memory, at most
`_MAX_PROPERTIES` properties; past that the longest known is forgotten first.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from gateway.errors import DecodeError
from gateway.ingest.availability import read_word
from gateway.ingest.routing import RouteMatch
from gateway.ingest.values import word_reading
from gateway.model import Decoded, RawMessage

DATATYPES = frozenset(
    ("integer", "float", "boolean", "string", "enum", "color", "datetime", "duration")
)
STATS_UNITS = {
    "uptime": "s",
    "signal": "%",
    "cputemp": "°C",
    "cpuload": "%",
    "battery": "%",
    "freeheap": "B",
    "supply": "V",
}
_MAX_PROPERTIES = 100_000
_INTEGER = re.compile(r"-?[0-9]+")
# Homie's durations: PTnHnMnS (days too, though the convention shows none); years and months
# have no fixed length and are refused.
_DURATION = re.compile(
    r"P(?:(?P<d>[0-9]+(?:\.[0-9]+)?)D)?"
    r"(?:T(?:(?P<h>[0-9]+(?:\.[0-9]+)?)H)?(?:(?P<m>[0-9]+(?:\.[0-9]+)?)M)?"
    r"(?:(?P<s>[0-9]+(?:\.[0-9]+)?)S)?)?"
)
_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


@dataclass(slots=True)
class _Property:
    datatype: str | None = None
    unit: str | None = None


def duration_seconds(text: str) -> float:
    """An ISO 8601 duration (`PT12H5M46S`) in seconds."""
    match = _DURATION.fullmatch(text)
    if match is None or text in ("P", "PT") or text.endswith("T"):
        raise DecodeError(f"{text[:40]!r} is not an ISO 8601 duration (PTnHnMnS)")
    return sum(float(v) * _SECONDS[k] for k, v in match.groupdict().items() if v is not None)


def typed_reading(metric: str, text: str, prop: _Property | None) -> Decoded:
    """A property's value by its datatype; untyped when none is known."""
    datatype = prop.datatype if prop else None
    unit = prop.unit if prop else None
    if datatype in ("integer", "float"):
        word = text.strip()
        if datatype == "integer" and not _INTEGER.fullmatch(word):
            raise DecodeError(f"integer property {metric!r}: {word[:40]!r} is not an integer")
        try:
            value = float(word)
        except ValueError:
            raise DecodeError(f"float property {metric!r}: {word[:40]!r} is not a number") from None
        if not math.isfinite(value):
            raise DecodeError(f"float property {metric!r}: {word[:40]!r} is not a finite number")
        return Decoded(metric, value, None, unit)
    if datatype == "boolean":
        word = text.strip()
        if word.lower() not in ("true", "false"):
            raise DecodeError(f"boolean property {metric!r}: {word[:40]!r} is not true/false")
        return Decoded(metric, 1.0 if word.lower() == "true" else 0.0, word, unit)
    if datatype == "duration":
        word = text.strip()
        return Decoded(metric, duration_seconds(word), word, unit or "s")
    if datatype is None:
        return word_reading(metric, text, unit)
    return Decoded(metric, None, text, unit)  # string, enum, color, datetime


class HomieDecoder:
    """Remembers each property's `$datatype` and `$unit`; see the module docstring."""

    name = "homie"

    def __init__(self) -> None:
        self._properties: dict[tuple[str, str], _Property] = {}

    def property(self, device: str, metric: str) -> _Property | None:
        """What is known of a property (`node.property`), if anything."""
        return self._properties.get((device, metric))

    def decode_message(self, msg: RawMessage, match: RouteMatch) -> list[Decoded]:
        device, path = match.device, match.metric
        if path is None:
            raise DecodeError("Homie needs a route homie/{device}/{metric...}")
        if device.startswith("$"):  # homie/$broadcast/...: messages to devices
            return []
        try:
            text = msg.payload.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("Homie payloads are UTF-8 text") from None
        levels = path.split(".")
        first = levels[0]
        if first.startswith("$"):
            return self._device_attribute(levels, text)
        if len(levels) == 2:
            if levels[1].startswith("$"):  # a node attribute: $name, $type, $properties
                return []
            return [typed_reading(path, text, self._properties.get((device, path)))]
        if len(levels) == 3:
            attribute = levels[2]
            if attribute in ("$datatype", "$unit"):
                self._remember(device, f"{levels[0]}.{levels[1]}", attribute, text)
                return []
            if attribute.startswith("$") or attribute == "set":
                return []
        if len(levels) == 1:
            raise DecodeError(f"homie/{device}/{first}: a node has no value of its own")
        raise DecodeError(
            f"homie/{device}/{'/'.join(levels)} is not a Homie v3/v4 topic "
            "(<device>/<node>/<property>[/$attribute|/set])"
            + ("; Homie 5 (homie/5/...) is not read" if device == "5" else "")
        )

    def _device_attribute(self, levels: list[str], text: str) -> list[Decoded]:
        attribute = levels[0]
        if len(levels) == 1 and attribute in ("$state", "$online"):
            reading = read_word(text)
            return [] if reading is None else [reading]
        if attribute == "$stats" and len(levels) == 2 and levels[1] != "interval":
            stat = levels[1]
            return [word_reading(f"$stats.{stat}", text, STATS_UNITS.get(stat))]
        return []

    def _remember(self, device: str, path: str, attribute: str, text: str) -> None:
        word = text.strip()
        if attribute == "$datatype" and word not in DATATYPES:
            raise DecodeError(
                f"$datatype {word[:40]!r} of {path!r} is not one of {', '.join(sorted(DATATYPES))}"
            )
        key = (device, path)
        prop = self._properties.get(key)
        if prop is None:
            if len(self._properties) >= _MAX_PROPERTIES:
                # A flood of invented properties must not grow memory: forget the oldest.
                del self._properties[next(iter(self._properties))]
            prop = self._properties[key] = _Property()
        if attribute == "$datatype":
            prop.datatype = word
        else:
            prop.unit = word
