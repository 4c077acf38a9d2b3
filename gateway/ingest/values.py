"""Values as devices publish them one to a topic: a number, an on/off word, text, or JSON.

ESPHome (`21.5`, `ON`), Shelly Gen1 (`on`, `true`, `{"event":"S","event_cnt":2}`), Home
Assistant statestream and Homie values without a known datatype all read the same way, so a rule
or a query sees one convention whatever the format:

- a number is a value (`21.5`); one that is not finite (`nan`, ESPHome's sensor without a
  state) is text without a value, as is ESPHome's `None`;
- `on`/`off`/`true`/`false`, in any case, are 1/0 with the word kept as sent in `text`;
- other words are text;
- a JSON object is one reading per scalar field, `<metric>.<field>` (nested fields joined with
  `.`); strings in it are text, except on/off words, which are 1/0 like plain ones; lists are
  kept whole as JSON text.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import orjson

from gateway.errors import DecodeError
from gateway.model import Decoded

BINARY = {"on": 1.0, "off": 0.0, "true": 1.0, "false": 0.0}
_MAX_DEPTH = 8
_MAX_FIELDS = 1000

Units = Callable[[str], str | None]  # a reading's unit from its metric name


def word_reading(metric: str, text: str, unit: str | None = None) -> Decoded:
    """One plain value: a number, an on/off word (1/0, word kept), or text."""
    word = text.strip()
    binary = BINARY.get(word.lower())
    if binary is not None:
        return Decoded(metric, binary, word, unit)
    try:
        value = float(word)
    except ValueError:
        return Decoded(metric, None, word, unit)
    if not math.isfinite(value):
        return Decoded(metric, None, word, unit)
    return Decoded(metric, value, None, unit)


def object_readings(prefix: str, data: dict[str, Any], units: Units | None = None) -> list[Decoded]:
    """Each scalar field of a JSON object as a reading named `<prefix>.<field>`."""
    out: list[Decoded] = []
    _fields(prefix, data, units, out, 0)
    return out


def _fields(
    prefix: str, data: dict[str, Any], units: Units | None, out: list[Decoded], depth: int
) -> None:
    if depth > _MAX_DEPTH:
        raise DecodeError(f"JSON nests deeper than {_MAX_DEPTH} levels at {prefix!r}")
    for key, raw in data.items():
        name = f"{prefix}.{key}"
        if isinstance(raw, dict):
            _fields(name, raw, units, out, depth + 1)
            continue
        if len(out) >= _MAX_FIELDS:
            raise DecodeError(f"JSON object has more than {_MAX_FIELDS} fields")
        unit = units(name) if units else None
        if isinstance(raw, bool):
            out.append(Decoded(name, float(raw), "true" if raw else "false", unit))
        elif isinstance(raw, int | float):
            if not math.isfinite(raw):
                raise DecodeError(f"field {name!r}: {raw!r} is not a finite number")
            out.append(Decoded(name, float(raw), None, unit))
        elif isinstance(raw, str):
            binary = BINARY.get(raw.lower())
            out.append(Decoded(name, binary, raw, unit))
        elif raw is None:
            out.append(Decoded(name, None, None, unit))
        else:  # a list, kept whole
            out.append(Decoded(name, None, orjson.dumps(raw).decode(), unit))


def plain_readings(payload: bytes, metric: str, units: Units | None = None) -> list[Decoded]:
    """A value published on its own topic: see the module docstring. A payload that starts
    like a JSON object but is none is text: a text sensor may say anything."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("payload is not UTF-8 text") from None
    if text[:1] == "{":
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            return object_readings(metric, data, units)
    return [word_reading(metric, text, units(metric) if units else None)]
