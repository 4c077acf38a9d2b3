"""Homie v3/v4: values typed by their property's retained `$datatype` and `$unit`, `$state` as
availability, the other attributes and commands as nothing; memory stays bounded."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.config import GatewayConfig
from gateway.errors import DecodeError
from gateway.ingest import homie as homie_module
from gateway.ingest.homie import HomieDecoder, duration_seconds
from gateway.ingest.routing import TopicRouter
from gateway.model import Decoded, RawMessage

ROUTER = TopicRouter(GatewayConfig().routes)


def send(homie: HomieDecoder, topic: str, payload: str) -> list[Decoded]:
    match = ROUTER.route(topic)
    assert match is not None and match.decoder == "homie", topic
    return homie.decode_message(
        RawMessage(topic, payload.encode(), 1, 1, False, True, 1.7e9), match
    )


def test_values_are_typed_by_their_attributes() -> None:
    homie = HomieDecoder()
    attributes = {
        "homie/boiler/$homie": "4.0.0",
        "homie/boiler/$name": "Boiler",
        "homie/boiler/$nodes": "heating,pump",
        "homie/boiler/$extensions": "",
        "homie/boiler/heating/$name": "Heating",
        "homie/boiler/heating/$properties": "temperature,on,mode,runtime,colour,since,count",
        "homie/boiler/heating/temperature/$name": "Water temperature",
        "homie/boiler/heating/temperature/$datatype": "float",
        "homie/boiler/heating/temperature/$unit": "°C",
        "homie/boiler/heating/temperature/$format": "0:100",
        "homie/boiler/heating/temperature/$settable": "false",
        "homie/boiler/heating/on/$datatype": "boolean",
        "homie/boiler/heating/mode/$datatype": "enum",
        "homie/boiler/heating/mode/$format": "eco,comfort",
        "homie/boiler/heating/runtime/$datatype": "duration",
        "homie/boiler/heating/colour/$datatype": "color",
        "homie/boiler/heating/since/$datatype": "datetime",
        "homie/boiler/heating/count/$datatype": "integer",
        "homie/boiler/heating/count/$unit": "#",
        "homie/boiler/heating/label/$datatype": "string",
    }
    for topic, payload in attributes.items():
        assert send(homie, topic, payload) == [], topic
    assert send(homie, "homie/boiler/heating/temperature", "61.5") == [
        Decoded("heating.temperature", 61.5, None, "°C")
    ]
    assert send(homie, "homie/boiler/heating/on", "true") == [Decoded("heating.on", 1.0, "true")]
    assert send(homie, "homie/boiler/heating/mode", "eco") == [Decoded("heating.mode", None, "eco")]
    assert send(homie, "homie/boiler/heating/runtime", "PT1H2M3S") == [
        Decoded("heating.runtime", 3723.0, "PT1H2M3S", "s")
    ]
    assert send(homie, "homie/boiler/heating/colour", "255,0,0") == [
        Decoded("heating.colour", None, "255,0,0")
    ]
    assert send(homie, "homie/boiler/heating/since", "2024-03-01T12:00:00Z") == [
        Decoded("heating.since", None, "2024-03-01T12:00:00Z")
    ]
    assert send(homie, "homie/boiler/heating/count", "-7") == [
        Decoded("heating.count", -7.0, None, "#")
    ]
    # A string property keeps digits as text: its datatype says so.
    assert send(homie, "homie/boiler/heating/label", "42") == [Decoded("heating.label", None, "42")]


def test_a_value_before_its_attributes_is_read_untyped_and_typed_after() -> None:
    homie = HomieDecoder()
    # After a restart the broker sends the retained value before the attributes below it.
    assert send(homie, "homie/boiler/heating/temperature", "61.5") == [
        Decoded("heating.temperature", 61.5, None)
    ]
    assert send(homie, "homie/boiler/heating/on", "true") == [Decoded("heating.on", 1.0, "true")]
    assert send(homie, "homie/boiler/heating/label", "42") == [Decoded("heating.label", 42.0, None)]
    send(homie, "homie/boiler/heating/temperature/$unit", "°C")
    send(homie, "homie/boiler/heating/temperature/$datatype", "float")
    assert send(homie, "homie/boiler/heating/temperature", "62") == [
        Decoded("heating.temperature", 62.0, None, "°C")
    ]
    # Attributes are per device and property.
    assert send(homie, "homie/other/heating/temperature", "62") == [
        Decoded("heating.temperature", 62.0, None)
    ]


@pytest.mark.parametrize(
    ("word", "value", "text"),
    [
        ("ready", 1.0, "online"),
        ("alert", 1.0, "online"),
        ("lost", 0.0, "offline"),
        ("disconnected", 0.0, "offline"),
        ("sleeping", 0.0, "offline"),
    ],
)
def test_state_is_availability(word: str, value: float, text: str) -> None:
    assert send(HomieDecoder(), "homie/boiler/$state", word) == [
        Decoded("availability", value, text)
    ]


def test_init_stats_commands_and_broadcasts() -> None:
    homie = HomieDecoder()
    assert send(homie, "homie/boiler/$state", "init") == []  # neither online nor offline
    assert send(homie, "homie/old/$online", "true") == [Decoded("availability", 1.0, "online")]
    assert send(homie, "homie/boiler/$stats/uptime", "3600") == [
        Decoded("$stats.uptime", 3600.0, None, "s")
    ]
    assert send(homie, "homie/boiler/$stats/signal", "72") == [
        Decoded("$stats.signal", 72.0, None, "%")
    ]
    for topic in (
        "homie/boiler/$stats/interval",
        "homie/boiler/$stats",
        "homie/boiler/$fw/name",
        "homie/boiler/$implementation/ota/enabled",
        "homie/boiler/heating/temperature/set",
        "homie/$broadcast/alert",
    ):
        assert send(homie, topic, "60") == [], topic


@pytest.mark.parametrize(
    ("attributes", "topic", "payload", "reason"),
    [
        ({"$datatype": "integer"}, "homie/d/n/p", "2.5", "is not an integer"),
        ({"$datatype": "float"}, "homie/d/n/p", "warm", "is not a number"),
        ({"$datatype": "float"}, "homie/d/n/p", "NaN", "not a finite number"),
        ({"$datatype": "boolean"}, "homie/d/n/p", "yes", "is not true/false"),
        ({"$datatype": "duration"}, "homie/d/n/p", "P1Y", "not an ISO 8601 duration"),
        ({}, "homie/d/n/p/$datatype", "number", "is not one of boolean, color"),
        ({}, "homie/d/n", "1", "a node has no value of its own"),
        ({}, "homie/d/n/p/x", "1", "is not a Homie v3/v4 topic"),
        ({}, "homie/5/d/n/p", "1", "Homie 5 .* is not read"),
        ({}, "homie/d/n/p", "\udcff", "UTF-8"),
    ],
)
def test_refusals_say_why(
    attributes: dict[str, str], topic: str, payload: str, reason: str
) -> None:
    homie = HomieDecoder()
    for name, value in attributes.items():
        send(homie, f"homie/d/n/p/{name}", value)
    match = ROUTER.route(topic)
    assert match is not None
    body = payload.encode("utf-8", "surrogateescape")
    with pytest.raises(DecodeError, match=reason):
        homie.decode_message(RawMessage(topic, body, 1, 1, False, False, 1.7e9), match)


def test_durations() -> None:
    assert duration_seconds("PT12H5M46S") == 43546.0
    assert duration_seconds("PT0.5S") == 0.5
    assert duration_seconds("P1DT1S") == 86401.0
    for bad in ("P", "PT", "P1DT", "12", "PT1X"):
        with pytest.raises(DecodeError):
            duration_seconds(bad)


def test_a_flood_of_invented_properties_keeps_memory_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(homie_module, "_MAX_PROPERTIES", 1000)
    homie = HomieDecoder()
    unit = ROUTER.route("homie/d/n/p/$unit")
    assert unit is not None
    for i in range(1500):
        msg = RawMessage(f"homie/d{i}/n/p/$unit", b"W", 1, 1, False, True, 1.7e9)
        homie.decode_message(msg, replace(unit, device=f"d{i}"))
    assert len(homie._properties) == 1000  # never more than the bound
    assert homie.property("d499", "n.p") is None  # the oldest went first
    assert homie.property("d500", "n.p") is not None
    assert homie.property("d1499", "n.p") is not None
