"""Shelly Gen1 (`shellies/<id>/...`): one value per topic, named by the topic's levels.

A Gen1 device publishes each of its states on its own topic under `shellies/<model>-<id>/`:
`relay/0` (`on`/`off`/`overpower`), `relay/0/power` (W), `relay/0/energy`, `emeter/1/voltage`,
`sensor/temperature`, `input/0` (`0`/`1`), `roller/0/pos` (%), and a few JSON objects
(`input_event/0`: `{"event":"S","event_cnt":2}`, `light/0/status`). The route names the device
and the levels after it, joined with `.`, as metric (`relay.0.power`, `sensor.temperature`);
values read as in gateway/ingest/values.py. Units follow the last level that is not an index.

`energy` and `returned_energy` count watt-minutes: they are stored divided by 60, in Wh, the
unit of `emeter/<i>/total`, of Shelly Gen2 and of Home Assistant's Shelly integration.
`sensor/temperature` is in the unit set on the device; °C is the default, and the reading says
°C (a route with `unit: °F` and decoder `number` before the default ones reads a device set to
°F).
"""

from __future__ import annotations

from gateway.errors import DecodeError
from gateway.ingest.values import plain_readings
from gateway.model import Decoded

UNITS = {
    "power": "W",
    "overpower_value": "W",
    "reactive_power": "var",
    "voltage": "V",
    "adc": "V",
    "current": "A",
    "ixsum": "A",
    "energy": "Wh",
    "returned_energy": "Wh",
    "total": "Wh",
    "total_returned": "Wh",
    "temperature": "°C",
    "ext_temperature": "°C",
    "temperature_f": "°F",
    "ext_temperature_f": "°F",
    "humidity": "%",
    "ext_humidity": "%",
    "battery": "%",
    "bat": "%",
    "pos": "%",
    "brightness": "%",
    "lux": "lx",
    "tilt": "°",
    "concentration": "ppm",
}
_WATT_MINUTES = ("energy", "returned_energy")


def _quantity(metric: str) -> str:
    """What a metric measures: its last level that is not a channel index (`relay.0` is a
    relay, `ext_temperature.1` a temperature)."""
    for level in reversed(metric.split(".")):
        if not level.isdigit():
            return level
    return metric


def unit_of(metric: str) -> str | None:
    return UNITS.get(_quantity(metric))


def decode_shelly_gen1(payload: bytes, metric: str | None) -> list[Decoded]:
    """One Gen1 topic's value; see the module docstring."""
    if metric is None:
        raise DecodeError("Shelly Gen1 needs a route that names the metric (shellies/{device}/...)")
    readings = plain_readings(payload, metric, unit_of)
    if len(readings) == 1 and _quantity(metric) in _WATT_MINUTES:
        counter = readings[0]
        if counter.metric == metric and counter.value is not None and counter.text is None:
            counter.value /= 60
    return readings
