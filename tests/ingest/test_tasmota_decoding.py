"""Tasmota beyond telemetry: answers to commands (`stat/<t>/RESULT`, `STATUS<n>`, `POWER`), read
the way `tele/<t>/SENSOR` and `STATE` are (power states as their word, `ON`/`OFF`)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.errors import DecodeError
from gateway.ingest.tasmota import decode_tasmota, decode_tasmota_stat
from gateway.model import Decoded

NOON = datetime(2024, 3, 1, 12, tzinfo=UTC).timestamp()


def by_metric(readings: list[Decoded]) -> dict[str, tuple[float | None, str | None]]:
    return {r.metric: (r.value, r.text) for r in readings}


def test_power_reads_the_same_from_state_result_and_the_power_topic() -> None:
    state = decode_tasmota(b'{"Time":"2024-03-01T12:00:00","POWER":"ON","UptimeSec":5}', None)
    assert by_metric(state) == {"POWER": (None, "ON"), "UptimeSec": (5.0, None)}
    assert by_metric(decode_tasmota_stat(b'{"POWER":"ON"}', "RESULT")) == {"POWER": (None, "ON")}
    assert decode_tasmota_stat(b"ON", "POWER") == [Decoded("POWER", None, "ON")]
    assert by_metric(decode_tasmota_stat(b'{"POWER1":"OFF"}', "RESULT")) == {
        "POWER1": (None, "OFF")
    }
    assert decode_tasmota_stat(b"OFF\n", "POWER2") == [Decoded("POWER2", None, "OFF")]


def test_command_answers_are_read_like_state() -> None:
    answer = decode_tasmota_stat(
        b'{"POWER":"ON","Dimmer":50,"Color":"FF8000","Channel":[100,50,0]}', "RESULT"
    )
    assert by_metric(answer) == {
        "POWER": (None, "ON"),
        "Dimmer": (50.0, None),
        "Color": (None, "FF8000"),
        "Channel.1": (100.0, None),  # a list of numbers: one reading per channel
        "Channel.2": (50.0, None),
        "Channel.3": (0.0, None),
    }
    assert all(r.event_time is None for r in answer)  # answers carry no time: arrival time
    # SetOption4 sends the answer on stat/<t>/<COMMAND> instead of RESULT.
    assert by_metric(decode_tasmota_stat(b'{"Dimmer":20}', "DIMMER")) == {"Dimmer": (20.0, None)}


def test_an_unknown_command_answer_is_no_reading() -> None:
    assert decode_tasmota_stat(b'{"Command":"Unknown"}', "RESULT") == []
    assert decode_tasmota_stat(b'{"Command":"Error"}', "RESULT") == []


def test_status_sensor_and_state_sections_read_like_sensor_and_state_messages() -> None:
    sensor = decode_tasmota_stat(
        b'{"StatusSNS":{"Time":"2024-03-01T12:00:00","AM2301":{"Temperature":21.1,'
        b'"Humidity":40.5,"DewPoint":7.0},"TempUnit":"C"}}',
        "STATUS10",
    )
    assert by_metric(sensor) == {
        "AM2301.Temperature": (21.1, None),
        "AM2301.Humidity": (40.5, None),
        "AM2301.DewPoint": (7.0, None),
    }
    assert [r.unit for r in sensor] == ["°C", "%", "°C"]
    assert all(r.event_time == NOON and not r.zoned for r in sensor)  # local time, no zone
    state = decode_tasmota_stat(
        b'{"StatusSTS":{"Time":"2024-03-01T12:00:00","POWER":"OFF","Wifi":{"RSSI":70}}}',
        "STATUS11",
    )
    assert by_metric(state) == {"POWER": (None, "OFF"), "Wifi.RSSI": (70.0, None)}
    # STATUS 0 in one message: both sections read, the device description not.
    everything = decode_tasmota_stat(
        b'{"Status":{"Module":1,"Topic":"plug"},"StatusNET":{"IPAddress":"192.168.1.9"},'
        b'"StatusSNS":{"Time":"2024-03-01T12:00:00","Switch1":"ON"},'
        b'"StatusSTS":{"Time":"2024-03-01T12:00:00","UptimeSec":9}}',
        "STATUS0",
    )
    assert by_metric(everything) == {"Switch1": (None, "ON"), "UptimeSec": (9.0, None)}


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("STATUS", b'{"Status":{"Module":1,"DeviceName":"plug","Power":1}}'),
        ("STATUS2", b'{"StatusFWR":{"Version":"13.1.0(tasmota)","Boot":31}}'),
        ("STATUS4", b'{"StatusMEM":{"ProgramSize":457,"Free":544,"Heap":23}}'),
        ("STATUS5", b'{"StatusNET":{"Hostname":"plug","IPAddress":"192.168.1.9"}}'),
        ("STATUS10", b'{"StatusSNS":{"Time":"2024-03-01T12:00:00"}}'),  # no sensor attached
    ],
)
def test_status_answers_about_the_device_itself_are_no_readings(name: str, payload: bytes) -> None:
    assert decode_tasmota_stat(payload, name) == []


@pytest.mark.parametrize(
    ("name", "payload", "reason"),
    [
        ("STATUS10", b"[1]", "STATUS10 answer must be a JSON object"),
        ("STATUS10", b'{"StatusSNS":"warm"}', "StatusSNS is not a JSON object"),
        (
            "STATUS11",
            b'{"StatusSTS":{"Time":"yesterday","UptimeSec":5}}',
            "neither ISO 8601 nor epoch",
        ),
        ("RESULT", b'{"POWER":', "malformed JSON"),
        ("POWER", b"\xff", "not UTF-8"),
    ],
)
def test_stat_refusals_say_why(name: str, payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_tasmota_stat(payload, name)


def test_stat_needs_the_topic_level_as_metric() -> None:
    with pytest.raises(DecodeError, match="names the metric"):
        decode_tasmota_stat(b"ON", None)


def test_units_follow_the_message_and_energy_channels_are_numbers() -> None:
    sensor = (
        b'{"Time":"2024-03-01T12:00:00","BME280":{"Pressure":988.6,"SeaPressure":1013.2},'
        b'"PressureUnit":"mmHg","ENERGY":{"Power":[52,5],"Voltage":235,"Total":1.5,"Factor":0.9},'
        b'"ZbReceived":{"0x3476":{"Power":1}}}'
    )
    readings = {r.metric: (r.value, r.unit) for r in decode_tasmota(sensor, None)}
    assert readings == {
        "BME280.Pressure": (988.6, "mmHg"),
        "BME280.SeaPressure": (1013.2, "mmHg"),
        "ENERGY.Power.1": (52.0, "W"),
        "ENERGY.Power.2": (5.0, "W"),
        "ENERGY.Voltage": (235.0, "V"),
        "ENERGY.Total": (1.5, "kWh"),
        "ENERGY.Factor": (0.9, None),
        "ZbReceived.0x3476.Power": (1.0, None),  # a switch's state, not watts
    }
