"""Shelly Gen2 `<id>/events/rpc` notifications: NotifyFullStatus, partial NotifyStatus, NotifyEvent.

A Gen2 device sends its whole status now and then (NotifyFullStatus) and, in between, NotifyStatus
messages that carry only the fields that changed. The decoder merges each partial update onto the
device's last known status and emits the complete current state of every component the message
mentions, so a reading of `switch:0.apower` always comes with `switch:0.output` beside it. Before a
full status has been seen, only the fields in the update are known.

Metric names are `<component>.<field>[.<subfield>]`: `switch:0.apower`, `switch:0.aenergy.total`,
`temperature:0.tC`. Lists (`aenergy.by_minute`) are not readings and are skipped; `id` is skipped.
NotifyEvent yields `<component>.event` with the event name as text (`input:0.event`).
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from gateway.errors import DecodeError
from gateway.ingest.decoders import impossible_time, parse_event_time
from gateway.ingest.routing import RouteMatch
from gateway.model import Decoded, RawMessage

UNITS = {
    "apower": "W",
    "voltage": "V",
    "current": "A",
    "freq": "Hz",
    "pf": None,
    "total": "Wh",
    "tC": "°C",
    "tF": "°F",
    "rh": "%",
    "lux": "lx",
    "percent": "%",
    "rssi": "dBm",
}
_MAX_DEVICES = 100_000


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        current = into.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            _merge(current, value)
        else:
            into[key] = value


def _leaves(obj: dict[str, Any], prefix: str, ts: float | None, out: list[Decoded]) -> None:
    for key, raw in obj.items():
        if key == "id" and not prefix.count("."):
            continue
        name = f"{prefix}.{key}"
        if isinstance(raw, dict):
            _leaves(raw, name, ts, out)
        elif isinstance(raw, bool):
            out.append(Decoded(name, float(raw), "true" if raw else "false", None, ts))
        elif isinstance(raw, int | float):
            if not math.isfinite(raw):
                raise DecodeError(f"field {name!r}: {raw!r} is not a finite number")
            out.append(Decoded(name, float(raw), None, UNITS.get(key), ts))
        elif isinstance(raw, str):
            out.append(Decoded(name, None, raw, None, ts))
        elif raw is None:
            out.append(Decoded(name, None, None, None, ts))
        # lists (by_minute histories) are skipped on purpose


class ShellyDecoder:
    """Remembers each device's merged status; see the module docstring."""

    name = "shelly"

    def __init__(self) -> None:
        self._status: dict[str, dict[str, Any]] = {}

    def status(self, device: str) -> dict[str, Any]:
        """The merged status last seen from `device` (empty if none)."""
        return self._status.get(device, {})

    def decode_message(self, msg: RawMessage, match: RouteMatch) -> list[Decoded]:
        try:
            data = orjson.loads(msg.payload)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"malformed JSON: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("params"), dict):
            raise DecodeError("Shelly RPC notification must be an object with `params`")
        method = data.get("method")
        params: dict[str, Any] = data["params"]
        ts = parse_event_time(params["ts"]) if "ts" in params else None
        device = match.device
        out: list[Decoded] = []
        if method == "NotifyEvent":
            events = params.get("events")
            if not isinstance(events, list):
                raise DecodeError("NotifyEvent without an `events` list")
            for event in events:
                if isinstance(event, dict) and isinstance(event.get("component"), str):
                    when = parse_event_time(event["ts"]) if "ts" in event else ts
                    name = str(event.get("event"))
                    out.append(Decoded(f"{event['component']}.event", None, name, None, when))
            return out
        if method not in ("NotifyStatus", "NotifyFullStatus"):
            raise DecodeError(f"Shelly method {method!r} is not a status notification")
        components = {k: v for k, v in params.items() if isinstance(v, dict)}
        if not components:
            raise DecodeError(f"{method} holds no component status")
        # The merge is made on a copy and kept only once the whole message has decoded: a
        # message quarantined for any reason must not change what the device is known to be.
        if method == "NotifyFullStatus":
            status = orjson.loads(orjson.dumps(components))
        else:
            status = orjson.loads(orjson.dumps(self._status.get(device, {})))
            _merge(status, orjson.loads(orjson.dumps(components)))
        for component in components:
            _leaves(status[component], component, ts, out)
        impossible = impossible_time(out)
        if impossible is not None:
            raise DecodeError(impossible)
        if device not in self._status and len(self._status) >= _MAX_DEVICES:
            self._status.clear()  # a flood of invented device ids must not grow memory
        self._status[device] = status
        return out
