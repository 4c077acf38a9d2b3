"""Shelly Gen1 (`shellies/<id>/...`): one value per topic, named by its levels, with units;
energy counters from watt-minutes to Wh."""

from __future__ import annotations

import pytest

from gateway.errors import DecodeError
from gateway.ingest.shelly_gen1 import decode_shelly_gen1, unit_of
from gateway.model import Decoded


def test_relay_state_power_and_energy() -> None:
    assert decode_shelly_gen1(b"on", "relay.0") == [Decoded("relay.0", 1.0, "on")]
    assert decode_shelly_gen1(b"off", "relay.1") == [Decoded("relay.1", 0.0, "off")]
    assert decode_shelly_gen1(b"overpower", "relay.0") == [Decoded("relay.0", None, "overpower")]
    assert decode_shelly_gen1(b"23.45", "relay.0.power") == [
        Decoded("relay.0.power", 23.45, None, "W")
    ]
    # The counter is in watt-minutes: 600 Wmin are 10 Wh.
    assert decode_shelly_gen1(b"600", "relay.0.energy") == [
        Decoded("relay.0.energy", 10.0, None, "Wh")
    ]


def test_energy_meter_quantities() -> None:
    cases = {
        ("emeter.0.power", b"1500.12"): (1500.12, "W"),
        ("emeter.0.reactive_power", b"-12.5"): (-12.5, "var"),
        ("emeter.1.voltage", b"231.2"): (231.2, "V"),
        ("emeter.2.current", b"6.5"): (6.5, "A"),
        ("emeter.0.pf", b"0.97"): (0.97, None),
        ("emeter.0.energy", b"120"): (2.0, "Wh"),
        ("emeter.0.returned_energy", b"30"): (0.5, "Wh"),
        ("emeter.0.total", b"12345.6"): (12345.6, "Wh"),  # already Wh
        ("emeter.0.total_returned", b"0"): (0.0, "Wh"),
    }
    for (metric, payload), (value, unit) in cases.items():
        (reading,) = decode_shelly_gen1(payload, metric)
        assert (reading.metric, reading.value, reading.unit) == (metric, value, unit), metric


def test_sensors_of_battery_devices() -> None:
    cases = {
        ("sensor.temperature", b"21.50"): (21.5, None, "°C"),
        ("sensor.humidity", b"48"): (48.0, None, "%"),
        ("sensor.battery", b"87"): (87.0, None, "%"),
        ("sensor.lux", b"120"): (120.0, None, "lx"),
        ("sensor.tilt", b"15"): (15.0, None, "°"),
        ("sensor.state", b"open"): (None, "open", None),
        ("sensor.flood", b"false"): (0.0, "false", None),
        ("sensor.concentration", b"0"): (0.0, None, "ppm"),
        ("ext_temperature.1", b"19.75"): (19.75, None, "°C"),  # the add-on's second probe
        ("temperature_f", b"98.6"): (98.6, None, "°F"),
        ("roller.0.pos", b"40"): (40.0, None, "%"),
        ("input.0", b"1"): (1.0, None, None),
    }
    for (metric, payload), (value, text, unit) in cases.items():
        assert decode_shelly_gen1(payload, metric) == [Decoded(metric, value, text, unit)], metric


def test_json_topics_are_one_reading_per_field() -> None:
    assert decode_shelly_gen1(b'{"event":"S","event_cnt":2}', "input_event.0") == [
        Decoded("input_event.0.event", None, "S"),
        Decoded("input_event.0.event_cnt", 2.0, None),
    ]
    status = decode_shelly_gen1(
        b'{"ison":true,"mode":"white","brightness":40,"power":5.5}', "light.0.status"
    )
    assert [(r.metric, r.value, r.unit) for r in status] == [
        ("light.0.status.ison", 1.0, None),
        ("light.0.status.mode", None, None),
        ("light.0.status.brightness", 40.0, "%"),
        ("light.0.status.power", 5.5, "W"),
    ]
    # A list is kept whole.
    assert decode_shelly_gen1(b'["button"]', "sensor.act_reasons") == [
        Decoded("sensor.act_reasons", None, '["button"]')
    ]


def test_units_follow_the_last_level_that_is_not_an_index() -> None:
    assert unit_of("relay.0") is None
    assert unit_of("ext_humidity.0") == "%"
    assert unit_of("emeter.2.power") == "W"
    assert unit_of("0") is None


def test_refusals_say_why() -> None:
    with pytest.raises(DecodeError, match="not UTF-8"):
        decode_shelly_gen1(b"\xff", "relay.0")
    with pytest.raises(DecodeError, match="names the metric"):
        decode_shelly_gen1(b"on", None)
    with pytest.raises(DecodeError, match="nests deeper"):
        decode_shelly_gen1(b'{"a":' * 20 + b"1" + b"}" * 20, "light.0.status")
    # What starts like JSON but is none is text, as a text sensor may say anything.
    assert decode_shelly_gen1(b"{oops", "sensor.error") == [Decoded("sensor.error", None, "{oops")]
