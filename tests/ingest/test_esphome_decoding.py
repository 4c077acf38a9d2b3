"""ESPHome state topics: numbers, ON/OFF as 1/0 with the word, text, and JSON lights."""

from __future__ import annotations

import pytest

from gateway.errors import DecodeError
from gateway.ingest.esphome import decode_esphome
from gateway.model import Decoded


@pytest.mark.parametrize(
    ("payload", "value", "text"),
    [
        (b"21.5", 21.5, None),  # sensor
        (b"-3", -3.0, None),
        (b"ON", 1.0, "ON"),  # binary_sensor, switch, fan
        (b"OFF", 0.0, "OFF"),
        (b"nan", None, "nan"),  # a sensor without a state
        (b"None", None, "None"),  # ... with publish_nan_as_none
        (b"2024.6.1", None, "2024.6.1"),  # text_sensor
        (b"open", None, "open"),  # cover
        (b"LOCKED", None, "LOCKED"),  # lock
        ("Küche warm".encode(), None, "Küche warm"),
    ],
)
def test_plain_states(payload: bytes, value: float | None, text: str | None) -> None:
    assert decode_esphome(payload, "x") == [Decoded("x", value, text)]


def test_json_light_state_is_one_reading_per_field() -> None:
    payload = (
        b'{"state":"ON","brightness":128,"color_mode":"rgb",'
        b'"color":{"r":255,"g":100,"b":0},"effect":"None"}'
    )
    readings = decode_esphome(payload, "desk_lamp")
    assert [(r.metric, r.value, r.text) for r in readings] == [
        ("desk_lamp.state", 1.0, "ON"),
        ("desk_lamp.brightness", 128.0, None),
        ("desk_lamp.color_mode", None, "rgb"),
        ("desk_lamp.color.r", 255.0, None),
        ("desk_lamp.color.g", 100.0, None),
        ("desk_lamp.color.b", 0.0, None),
        ("desk_lamp.effect", None, "None"),
    ]


def test_refusals_say_why() -> None:
    with pytest.raises(DecodeError, match="not UTF-8"):
        decode_esphome(b"\xff\xfe", "t")
    with pytest.raises(DecodeError, match="names the metric"):
        decode_esphome(b"1", None)
    with pytest.raises(DecodeError, match="more than 1000 fields"):
        decode_esphome(("{" + ",".join(f'"f{i}":1' for i in range(1001)) + "}").encode(), "t")
