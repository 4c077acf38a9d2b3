"""Zigbee2MQTT: device states, and the bridge's device list with each device's units.

A device's state is a JSON object of fields on `zigbee2mqtt/<friendly name>` (`temperature`,
`linkquality`, `battery`, ...), each field one reading. Units: what the device's own definition
says (below), else the common fields' usual units; a field whose unit differs between devices
(`voltage`: mV on battery sensors, V on plugs) has none until the definition says.

`zigbee2mqtt/bridge/devices` is the bridge's list of its devices, published retained on start
and whenever a device joins, leaves or is renamed: one object per device (`friendly_name`,
`ieee_address`, `power_source`, `definition: {model, vendor, exposes}`; the coordinator has no
definition). Each device yields text readings under its friendly name: `model`, `vendor` (the
device registry keeps both), `ieee_address` and `power_source`; devices still being
interviewed say nothing yet. The units its `exposes` declare are kept for its state messages.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import DecodeError
from gateway.ingest.decoders import loads, object_readings
from gateway.ingest.routing import RouteMatch
from gateway.ingest.stateful import TaggedDecoded
from gateway.model import Decoded, RawMessage

# Units of the fields Zigbee2MQTT exposes most often, the same on every device.
USUAL_UNITS = {
    "temperature": "°C",
    "humidity": "%",
    "battery": "%",
    "linkquality": "lqi",
    "illuminance_lux": "lx",
    "illuminance": "lx",
    "pressure": "hPa",
    "power": "W",
    "energy": "kWh",
    "current": "A",
    "co2": "ppm",
}
_FACTS = ("ieee_address", "power_source")
_MAX_DEVICES = 100_000


def decode_state(payload: bytes, units: dict[str, str] | None = None) -> list[Decoded]:
    """A device's state message; `units` are the device's own (from its definition)."""
    data = loads(payload)
    if not isinstance(data, dict):
        raise DecodeError("Zigbee2MQTT payload must be a JSON object")
    return object_readings(data, None, {**USUAL_UNITS, **units} if units else USUAL_UNITS, ())


class Zigbee2Mqtt:
    """One instance for both routes (`zigbee2mqtt`, `zigbee2mqtt_devices`): the device list
    teaches it each device's units."""

    def __init__(self) -> None:
        self._units: dict[str, dict[str, str]] = {}  # friendly name -> field -> unit

    def units(self, device: str) -> dict[str, str]:
        return self._units.get(device, {})

    def decode_message(self, msg: RawMessage, match: RouteMatch) -> list[Decoded]:
        if match.decoder == "zigbee2mqtt_devices":
            return self._device_list(msg.payload)
        return decode_state(msg.payload, self._units.get(match.device))

    def _device_list(self, payload: bytes) -> list[Decoded]:
        data = loads(payload)
        if not isinstance(data, list):
            raise DecodeError("bridge/devices must be a JSON array of devices")
        readings: list[Decoded] = []
        units: dict[str, dict[str, str]] = {}
        for index, entry in enumerate(data[:_MAX_DEVICES]):
            if not isinstance(entry, dict):
                raise DecodeError(f"device [{index}] is a {type(entry).__name__}, not an object")
            name = entry.get("friendly_name")
            if not isinstance(name, str) or not name:
                raise DecodeError(f"device [{index}] has no friendly_name")
            if entry.get("interviewing") is True:
                continue
            definition = entry.get("definition")
            facts: list[tuple[str, Any]] = []
            if isinstance(definition, dict):
                facts += [("model", definition.get("model")), ("vendor", definition.get("vendor"))]
                exposed: dict[str, str] = {}
                _exposed_units(definition.get("exposes"), "", exposed, 0)
                if exposed:
                    units[name] = exposed
            facts += [(key, entry.get(key)) for key in _FACTS]
            readings += [
                TaggedDecoded(metric, None, value, device=name)
                for metric, value in facts
                if isinstance(value, str) and value
            ]
        self._units = units  # the list is whole: devices no longer in it are gone
        return readings


def _exposed_units(exposes: Any, prefix: str, out: dict[str, str], depth: int) -> None:
    """`{"property": "voltage", "unit": "mV"}` entries, also inside a light's or a switch's
    `features`; a composite (`color` with `x`, `y`) nests its features' names (`color.x`)."""
    if not isinstance(exposes, list) or depth > 4:
        return
    for item in exposes:
        if not isinstance(item, dict):
            continue
        prop = item.get("property")
        unit = item.get("unit")
        if isinstance(prop, str) and isinstance(unit, str) and unit:
            out[prefix + prop] = unit
        features = item.get("features")
        if features is not None:
            nested = f"{prefix}{prop}." if item.get("type") == "composite" and prop else prefix
            _exposed_units(features, nested, out, depth + 1)
