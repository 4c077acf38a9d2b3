"""Zigbee2MQTT's `bridge/devices`: the bridge's list of its devices, with model and vendor.

Zigbee2MQTT publishes it retained, on start and whenever a device joins, leaves or is renamed:
a JSON array, one object per device (`friendly_name`, `ieee_address`, `type`, `power_source`,
`definition: {model, vendor, description}`; the coordinator has no definition). Each device
yields text readings under its friendly name: `model`, `vendor` (which the device registry
keeps as the device's own), `ieee_address` and `power_source`. Devices still being interviewed
say nothing yet.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import DecodeError
from gateway.ingest.routing import RouteMatch
from gateway.ingest.stateful import TaggedDecoded
from gateway.model import Decoded, RawMessage

_FIELDS = ("ieee_address", "power_source")


class Zigbee2MqttDevices:
    """A message decoder only to name each reading's device; it keeps no state."""

    def decode_message(self, msg: RawMessage, match: RouteMatch) -> list[Decoded]:
        del match
        try:
            data = orjson.loads(msg.payload)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"malformed JSON: {exc}") from None
        if not isinstance(data, list):
            raise DecodeError("bridge/devices must be a JSON array of devices")
        readings: list[Decoded] = []
        for index, entry in enumerate(data):
            if not isinstance(entry, dict):
                raise DecodeError(f"device [{index}] is a {type(entry).__name__}, not an object")
            name = entry.get("friendly_name")
            if not isinstance(name, str) or not name:
                raise DecodeError(f"device [{index}] has no friendly_name")
            if entry.get("interviewing") is True:
                continue
            readings.extend(_facts(name, entry))
        return readings


def _facts(name: str, entry: dict[str, Any]) -> list[Decoded]:
    facts: list[tuple[str, Any]] = []
    definition = entry.get("definition")
    if isinstance(definition, dict):
        facts += [("model", definition.get("model")), ("vendor", definition.get("vendor"))]
    facts += [(key, entry.get(key)) for key in _FIELDS]
    return [
        TaggedDecoded(metric, None, value, device=name)
        for metric, value in facts
        if isinstance(value, str) and value
    ]
