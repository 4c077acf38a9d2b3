"""Payload decoders: bytes in, `Decoded` readings out, or a DecodeError saying why not.

Each decoder is a plain function `(payload, metric) -> list[Decoded]`; `metric` is the metric
the topic named, if any.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.errors import DecodeError
from gateway.model import Decoded

Decoder = Callable[[bytes, str | None], list[Decoded]]

TIME_FIELDS = ("ts", "time", "timestamp")
_MAX_DEPTH = 8
_MAX_FIELDS = 1000

# Device times a reading may carry: from 1970-01-01 to before 2100-01-01 (UTC). Outside it a
# time is impossible, not just wrong (1e20 would be stored as the year 290309 BC, 3e17 as a year
# past 9999 that no sink can encode): the message is quarantined with the reason.
PLAUSIBLE_TIMES = (0.0, 4_102_444_800.0)


def impossible_time(decoded: list[Decoded]) -> str | None:
    """Why one of these readings' device times cannot be, or None. Decoders that keep state
    ask before they keep anything of the message; the batch decoder asks of every message."""
    low, high = PLAUSIBLE_TIMES
    for d in decoded:
        when = d.event_time
        if when is not None and not low <= when < high:  # also NaN
            return (
                f"event time {when!r} (epoch seconds) of {d.metric!r} is outside 1970-01-01 "
                "to 2099-12-31 UTC: an impossible device time"
            )
    return None


def parse_event_time(raw: Any) -> float:
    """Epoch seconds from ISO 8601 text or epoch seconds/milliseconds/microseconds."""
    return parse_device_time(raw)[0]


def parse_device_time(raw: Any) -> tuple[float, bool]:
    """Epoch seconds, and whether the time named its zone: ISO 8601 text without an offset is
    read as UTC and reported zone-less (the route's `timezone` corrects it); epoch numbers are
    UTC by definition."""
    if isinstance(raw, bool):
        raise DecodeError(f"timestamp {raw!r} is not a time")
    if isinstance(raw, int | float):
        value = float(raw)
        if not math.isfinite(value) or value < 0:
            raise DecodeError(f"timestamp {raw!r} is not a time")
        if value > 1e14:  # microseconds
            return value / 1e6, True
        if value > 1e11:  # milliseconds
            return value / 1e3, True
        return value, True
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw.strip())
        except ValueError:
            try:
                return parse_device_time(float(raw))
            except ValueError:
                raise DecodeError(f"timestamp {raw!r} is neither ISO 8601 nor epoch") from None
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC).timestamp(), False
        return parsed.timestamp(), True
    raise DecodeError(f"timestamp {raw!r} is not a time")


def _scalar(metric: str, raw: Any, unit: str | None, ts: float | None) -> Decoded | None:
    if isinstance(raw, bool):
        return Decoded(metric, 1.0 if raw else 0.0, "true" if raw else "false", unit, ts)
    if isinstance(raw, int | float):
        value = float(raw)
        if not math.isfinite(value):
            raise DecodeError(f"field {metric!r}: {raw!r} is not a finite number")
        return Decoded(metric, value, None, unit, ts)
    if isinstance(raw, str):
        return Decoded(metric, None, raw, unit, ts)
    if raw is None:
        return Decoded(metric, None, None, unit, ts)
    return None


def _flatten(obj: dict[str, Any], prefix: str, out: list[tuple[str, Any]], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise DecodeError(f"JSON nests deeper than {_MAX_DEPTH} levels at {prefix!r}")
    for key, raw in obj.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(raw, dict):
            _flatten(raw, name, out, depth + 1)
        else:
            out.append((name, raw))
        if len(out) > _MAX_FIELDS:
            raise DecodeError(f"JSON object has more than {_MAX_FIELDS} fields")


def loads(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"malformed JSON: {exc}") from None


def object_readings(
    obj: dict[str, Any],
    metric: str | None,
    units: dict[str, str] | None = None,
    time_fields: tuple[str, ...] = TIME_FIELDS,
) -> list[Decoded]:
    ts: float | None = None
    zoned = True
    for name in time_fields:
        if name in obj:
            ts, zoned = parse_device_time(obj[name])
            break
    # {"value": 21.5, "unit": "°C"} on a topic that names the metric is one reading.
    if metric is not None and "value" in obj:
        unit = obj.get("unit")
        reading = _scalar(metric, obj["value"], unit if isinstance(unit, str) else None, ts)
        if reading is None:
            raise DecodeError(f"field 'value' holds a {type(obj['value']).__name__}, not a scalar")
        return [reading]
    fields: list[tuple[str, Any]] = []
    _flatten(obj, "", fields, 0)
    readings: list[Decoded] = []
    for name, raw in fields:
        if name in time_fields:
            continue
        unit = units.get(name) if units else None
        reading = _scalar(name, raw, unit, ts)
        if reading is None:  # a list: kept whole, as JSON text
            reading = Decoded(name, None, orjson.dumps(raw).decode(), unit, ts)
        reading.zoned = zoned
        readings.append(reading)
    if not readings:
        raise DecodeError("JSON object holds no readings")
    return readings


def decode_number(payload: bytes, metric: str | None) -> list[Decoded]:
    """A plain number (`21.5`), boolean (`true`/`false`) or, failing both, an error."""
    if metric is None:
        raise DecodeError("a plain value needs a topic route that names the metric")
    text = payload.decode("utf-8", errors="strict").strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return [Decoded(metric, 1.0 if lowered == "true" else 0.0, lowered)]
    try:
        value = float(text)
    except ValueError:
        raise DecodeError(f"{text[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise DecodeError(f"{text[:40]!r} is not a finite number")
    return [Decoded(metric, value, None)]


def decode_text(payload: bytes, metric: str | None) -> list[Decoded]:
    """The payload as one text reading (door states, `ON`/`OFF`, `online`)."""
    if metric is None:
        raise DecodeError("a text value needs a topic route that names the metric")
    try:
        return [Decoded(metric, None, payload.decode("utf-8"))]
    except UnicodeDecodeError:
        raise DecodeError("payload is not UTF-8 text") from None


def decode_json(payload: bytes, metric: str | None) -> list[Decoded]:
    """A JSON object (each scalar field one reading) or a JSON scalar."""
    data = loads(payload)
    if isinstance(data, dict):
        return object_readings(data, metric)
    if metric is None:
        raise DecodeError("a JSON scalar needs a topic route that names the metric")
    reading = _scalar(metric, data, None, None)
    if reading is None:
        raise DecodeError(f"JSON {type(data).__name__} is not a reading; send an object or scalar")
    return [reading]


def decode_auto(payload: bytes, metric: str | None) -> list[Decoded]:
    """JSON when it looks like JSON, else a number or boolean, else text."""
    head = payload[:1]
    if head in (b"{", b"[", b'"'):
        return decode_json(payload, metric)
    if metric is None:
        raise DecodeError("a plain value needs a topic route that names the metric")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise DecodeError("payload is neither JSON nor UTF-8 text") from None
    lowered = text.lower()
    if lowered in ("true", "false"):
        return [Decoded(metric, 1.0 if lowered == "true" else 0.0, lowered)]
    try:
        value = float(text)
    except ValueError:
        return [Decoded(metric, None, text)]
    if not math.isfinite(value):
        return [Decoded(metric, None, text)]
    return [Decoded(metric, value, None)]


def decode_ignore(payload: bytes, metric: str | None) -> list[Decoded]:
    """No readings: for topics that carry none (commands to devices, a bridge's logs). The
    message is taken and acknowledged like any other."""
    del payload, metric
    return []
