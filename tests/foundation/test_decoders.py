"""Payload decoders: what each accepts, and the reason it gives for what it refuses."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.errors import DecodeError
from gateway.ingest.decoders import (
    decode_auto,
    decode_json,
    decode_number,
    decode_text,
    parse_event_time,
)
from gateway.ingest.tasmota import decode_tasmota
from gateway.ingest.zigbee2mqtt import decode_state
from gateway.model import Decoded


def test_plain_number_and_boolean() -> None:
    assert decode_number(b" 21.5\n", "temperature") == [Decoded("temperature", 21.5, None)]
    assert decode_number(b"TRUE", "occupancy") == [Decoded("occupancy", 1.0, "true")]


def test_plain_number_refuses_text_and_nan() -> None:
    with pytest.raises(DecodeError, match="not a number"):
        decode_number(b"warm", "temperature")
    with pytest.raises(DecodeError, match="not a finite number"):
        decode_number(b"nan", "temperature")


def test_auto_keeps_non_numeric_text_as_text() -> None:
    assert decode_auto(b"ON", "state") == [Decoded("state", None, "ON")]
    assert decode_auto(b"-3", "t") == [Decoded("t", -3.0, None)]


def test_text_refuses_invalid_utf8() -> None:
    with pytest.raises(DecodeError, match="not UTF-8"):
        decode_text(b"\xff\xfe", "state")


def test_json_object_fields_become_readings_with_event_time() -> None:
    readings = decode_json(b'{"temperature": 21.5, "ok": true, "ts": 1700000000000}', None)
    assert [r.metric for r in readings] == ["temperature", "ok"]
    assert readings[0].value == 21.5
    assert readings[1].value == 1.0 and readings[1].text == "true"
    assert all(r.event_time == 1_700_000_000.0 for r in readings)


def test_json_value_object_on_a_metric_topic_is_one_reading() -> None:
    readings = decode_json(b'{"value": 3.5, "unit": "bar", "time": "2024-05-01T10:00:00Z"}', "p")
    assert readings == [Decoded("p", 3.5, None, "bar", 1714557600.0)]


def test_json_nested_objects_flatten_with_dots() -> None:
    readings = decode_json(b'{"color": {"x": 0.3, "y": 0.4}}', None)
    assert [(r.metric, r.value) for r in readings] == [("color.x", 0.3), ("color.y", 0.4)]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"temperature": 21.5', "malformed JSON"),
        (b"[1, 2]", "not a reading"),
        (b"{}", "no readings"),
        (b'{"value": [1]}', "not a scalar"),
        (b'{"t": 1, "ts": "yesterday"}', "neither ISO 8601 nor epoch"),
        (b'{"t": 1, "ts": true}', "not a time"),
    ],
)
def test_json_refusals_say_why(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_json(payload, "m")


def test_deeply_nested_json_is_refused_not_recursed() -> None:
    payload = b'{"a":' * 50 + b"1" + b"}" * 50
    with pytest.raises(DecodeError, match="nests deeper"):
        decode_json(payload, None)


def test_event_time_units() -> None:
    assert parse_event_time(1_700_000_000) == 1_700_000_000.0
    assert parse_event_time(1_700_000_000_123) == pytest.approx(1_700_000_000.123)
    assert parse_event_time(1_700_000_000_123_456) == pytest.approx(1_700_000_000.123456)
    naive = parse_event_time("2024-01-01T00:00:00")
    assert naive == datetime(2024, 1, 1, tzinfo=UTC).timestamp()


def test_zigbee2mqtt_fields_with_units() -> None:
    payload = b'{"temperature": 19.2, "humidity": 55, "battery": 97, "linkquality": 120}'
    readings = {r.metric: r for r in decode_state(payload)}
    assert readings["temperature"].unit == "°C"
    assert readings["linkquality"].value == 120.0 and readings["linkquality"].unit == "lqi"
    assert readings["battery"].unit == "%"


def test_tasmota_sensor_message() -> None:
    payload = (
        b'{"Time":"2024-03-01T12:00:00","AM2301":{"Temperature":22.1,"Humidity":40.5},'
        b'"ENERGY":{"Power":12},"TempUnit":"C"}'
    )
    readings = {r.metric: r for r in decode_tasmota(payload, None)}
    assert readings["AM2301.Temperature"].value == 22.1
    assert readings["AM2301.Temperature"].unit == "°C"
    assert readings["AM2301.Humidity"].unit == "%"
    assert readings["ENERGY.Power"].unit == "W"
    expected = datetime(2024, 3, 1, 12, tzinfo=UTC).timestamp()
    assert all(r.event_time == expected for r in readings.values())
