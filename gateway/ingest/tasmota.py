"""Tasmota: `tele/<t>/SENSOR` and `STATE`, and the answers to commands on `stat/<t>/...`.

`Time` is the device's local time, without a zone (the route's `timezone` says which);
`TempUnit` and `PressureUnit` are the units of its temperatures and pressures. Energy monitors
report in `ENERGY` with fixed units (W, VA, VAr, V, A, kWh); a device with several channels
(a Shelly 2.5) sends a list per field, one number per channel: `ENERGY.Power.1`,
`ENERGY.Power.2`, counted from 1 as Tasmota's own commands count them. `Power` elsewhere is a
switch state (Zigbee2Tasmota's `"Power":1`), not watts.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import DecodeError
from gateway.ingest.decoders import loads, object_readings, parse_device_time
from gateway.model import Decoded

ENERGY_UNITS = {
    "Power": "W",
    "ApparentPower": "VA",
    "ReactivePower": "VAr",
    "Voltage": "V",
    "Current": "A",
    "Total": "kWh",
    "Today": "kWh",
    "Yesterday": "kWh",
}


def decode_tasmota(payload: bytes, metric: str | None) -> list[Decoded]:
    """Tasmota `tele/<topic>/SENSOR`: `{"Time": ..., "AM2301": {"Temperature": 21.1}, ...}`."""
    data = loads(payload)
    if not isinstance(data, dict):
        raise DecodeError("Tasmota payload must be a JSON object")
    return _tasmota_fields(data)


def _channels(data: dict[str, Any]) -> None:
    """Lists of numbers (one per channel) as objects keyed 1, 2, ...: one reading each."""
    for key, value in list(data.items()):
        if isinstance(value, dict):
            _channels(value)
        elif (
            isinstance(value, list)
            and value
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        ):
            data[key] = {str(i): v for i, v in enumerate(value, start=1)}


def _unit(metric: str, temp_unit: Any, pressure_unit: Any) -> str | None:
    levels = metric.split(".")
    if levels[-1].isdigit():  # a channel: the field's unit
        levels = levels[:-1]
    leaf = levels[-1]
    if len(levels) >= 2 and levels[-2] == "ENERGY":
        return ENERGY_UNITS.get(leaf)
    if leaf in ("Temperature", "DewPoint") and isinstance(temp_unit, str):
        return f"°{temp_unit}"
    if leaf in ("Pressure", "SeaPressure") and isinstance(pressure_unit, str):
        return pressure_unit
    if leaf == "Humidity":
        return "%"
    return None


def _tasmota_fields(data: dict[str, Any]) -> list[Decoded]:
    """A SENSOR or STATE object's fields (also a STATUS answer's sections)."""
    temp_unit = data.pop("TempUnit", None)
    pressure_unit = data.pop("PressureUnit", None)
    ts, zoned = parse_device_time(data.pop("Time")) if "Time" in data else (None, True)
    _channels(data)
    readings = object_readings(data, None, time_fields=())
    for reading in readings:
        reading.event_time = ts
        reading.zoned = zoned
        reading.unit = _unit(reading.metric, temp_unit, pressure_unit)
    return readings


# The sections of a STATUS answer that hold readings: StatusSNS (STATUS8/10) is a SENSOR
# message, StatusSTS (STATUS11) a STATE one; the others describe the device (network, firmware,
# memory, settings) and are not readings.
_TASMOTA_STATUS_READINGS = ("StatusSNS", "StatusSTS")
_TASMOTA_NO_READING = {"Time", "TempUnit", "PressureUnit"}


def decode_tasmota_stat(payload: bytes, metric: str | None) -> list[Decoded]:
    """Tasmota `stat/<topic>/<name>`: answers to commands. `metric` is the topic's last level:
    `RESULT` (or the command's name with SetOption4) holds a JSON object read like STATE,
    `STATUS<n>` the sections above, `POWER<n>` a plain `ON`/`OFF`: text, as `POWER` is in
    STATE and RESULT."""
    if metric is None:
        raise DecodeError("Tasmota stat needs a route that names the metric (stat/{device}/...)")
    if metric.startswith("STATUS"):
        data = loads(payload)
        if not isinstance(data, dict):
            raise DecodeError(f"Tasmota {metric} answer must be a JSON object")
        readings: list[Decoded] = []
        for section in _TASMOTA_STATUS_READINGS:
            if section in data:
                part = data[section]
                if not isinstance(part, dict):
                    raise DecodeError(f"Tasmota {metric}: {section} is not a JSON object")
                if part.keys() - _TASMOTA_NO_READING:  # a device without sensors: only Time
                    readings += _tasmota_fields(part)
        return readings
    if payload[:1] == b"{":
        data = loads(payload)
        if not isinstance(data, dict):
            raise DecodeError("Tasmota command answer must be a JSON object")
        # {"Command":"Unknown"} / "Error": the answer to a command it could not run.
        data.pop("Command", None)
        return _tasmota_fields(data) if data else []
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("payload is not UTF-8 text") from None
    return [Decoded(metric, None, text.strip())]
