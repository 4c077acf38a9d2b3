"""Home Assistant MQTT statestream: `<base>/<domain>/<object_id>/<state|attribute>` messages.

Statestream publishes an entity's state on `.../state`, each attribute JSON-encoded on
`.../<attribute>` (`"°C"`, `21.5`, `{"x": 1}`), and, when enabled, `last_changed`/`last_updated`
as ISO 8601 time. Current Home Assistant JSON-encodes the state and the times as well (`"on"`,
`"21.5"`, `"2026-12-03T10:00:00+00:00"`); older releases sent them as plain text (`on`, `21.5`).
Both are read the same: a JSON string is unquoted first. The route names the object id as device
and the last level as metric, so `homeassistant/sensor/kitchen_temperature/state` is device
`kitchen_temperature`, metric `state`. `on`/`off` (and `true`/`false`) become 1/0 with the word kept
as text; other non-numeric states are text.
"""

from __future__ import annotations

import math

import orjson

from gateway.errors import DecodeError
from gateway.ingest.values import word_reading
from gateway.model import Decoded


def _unquoted(text: str) -> str:
    """The text of a JSON string (`"on"` -> `on`); anything else as it is."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            inner = orjson.loads(text)
        except orjson.JSONDecodeError:
            return text
        if isinstance(inner, str):
            return inner
    return text


def decode_statestream(payload: bytes, metric: str | None) -> list[Decoded]:
    """One reading per message; see the module docstring."""
    if metric is None:
        raise DecodeError("statestream needs a route whose last level is {metric}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("statestream payload is not UTF-8 text") from None
    if metric in ("state", "last_changed", "last_updated"):
        text = _unquoted(text.strip())
        return [word_reading(metric, text) if metric == "state" else Decoded(metric, None, text)]
    if metric == "config":
        # Home Assistant MQTT discovery shares the `homeassistant/` prefix; it is not a reading.
        raise DecodeError("an MQTT discovery `config` message, not a statestream attribute")
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return [word_reading(metric, text)]  # older releases published some attributes unquoted
    if isinstance(data, bool):
        return [Decoded(metric, float(data), "true" if data else "false")]
    if isinstance(data, int | float):
        if not math.isfinite(data):
            raise DecodeError(f"attribute {metric!r}: {data!r} is not a finite number")
        return [Decoded(metric, float(data), None)]
    if isinstance(data, str):
        return [Decoded(metric, None, data)]
    if data is None:
        return [Decoded(metric, None, None)]
    return [Decoded(metric, None, orjson.dumps(data).decode())]
