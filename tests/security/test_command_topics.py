"""Names that come from the field (devices, metrics, payload text) cannot steer a rule's MQTT
command to another topic: a level separator or a wildcard in a filled-in value stops the command,
and template syntax in a name is never interpreted."""

from __future__ import annotations

import logging

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.rules.actions import Command
from gateway.rules.engine import RuleEngine
from gateway.rules.schema import parse_rule_file
from gateway.rules.testing import R, readings

RELAY = """
rules:
  - id: relay
    select: {device: "*"}
    trigger: {type: state, to: "on"}
    actions:
      - mqtt: {topic: "commands/{device}/{metric}/set", payload: "{text}"}
"""


def relay() -> RuleEngine:
    return RuleEngine(parse_rule_file(yaml.safe_load(RELAY), "relay.yaml"), allowed_lateness=0.0)


def commands(engine: RuleEngine, rows: list[R]) -> list[Command]:
    return [o for o in engine.process(readings(rows), now=1e6) if isinstance(o, Command)]


@pytest.mark.parametrize(
    ("device", "metric"),
    [
        ("lamp", "a/../b"),
        ("lamp/../../valve", "state"),
        ("lamp", "#"),
        ("lamp", "+"),
        ("lamp", "x\0y"),
    ],
)
def test_a_separator_or_wildcard_in_a_name_stops_the_command(
    device: str, metric: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = relay()
    with caplog.at_level(logging.WARNING, logger="gateway.rules.engine"):
        sent = commands(engine, [R(1, device, metric, text="on")])
    assert sent == []
    assert engine.counters()["commands_refused"] == 1
    assert "not sent" in caplog.text and "relay" in caplog.text


def test_template_syntax_in_a_name_is_kept_literally() -> None:
    sent = commands(relay(), [R(1, "{rule}", "{{metric}}", text="on")])
    assert [c.topic for c in sent] == ["commands/{rule}/{{metric}}/set"]


def test_ordinary_names_reach_their_own_topic() -> None:
    sent = commands(relay(), [R(1, "hall-lamp", "power.state", text="on")])
    assert [c.topic for c in sent] == ["commands/hall-lamp/power.state/set"]


@settings(max_examples=300, deadline=None)
@given(
    device=st.text(min_size=1, max_size=20),
    metric=st.text(min_size=1, max_size=20),
)
def test_any_name_either_stays_in_its_own_level_or_sends_nothing(device: str, metric: str) -> None:
    for command in commands(relay(), [R(1, device, metric, text="on")]):
        levels = command.topic.split("/")
        assert levels == ["commands", device, metric, "set"]
        assert "+" not in command.topic and "#" not in command.topic
