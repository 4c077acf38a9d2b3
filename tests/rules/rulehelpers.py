"""Helpers for the rules tests: compile rules from YAML text and run readings through them."""

from __future__ import annotations

from typing import Any

import yaml

from gateway.rules.actions import Command, Output
from gateway.rules.engine import RuleEngine
from gateway.rules.schema import parse_rule_file
from gateway.rules.testing import R, readings


def engine(text: str, **options: Any) -> RuleEngine:
    options.setdefault("allowed_lateness", 0.0)
    return RuleEngine(parse_rule_file(yaml.safe_load(text), "test.yaml"), **options)


def run(e: RuleEngine, rows: list[R], now: float | None = None) -> list[Output]:
    return e.process(readings(rows), now=now)


def fired_at(outputs: list[Output]) -> list[float]:
    return [o.time for o in outputs if isinstance(o, Command)]


def series(device: str, metric: str, values: list[float], start: float = 0.0) -> list[R]:
    return [R(start + i, device, metric, v) for i, v in enumerate(values)]


THRESHOLD = """
rules:
  - id: hot
    select: {{device: room, metric: temperature}}
    trigger: {{type: threshold, {trigger}}}
    actions:
      - mqtt: {{topic: "commands/{{device}}/fan", payload: "ON {{value}}"}}
"""


def threshold(trigger: str, **options: Any) -> RuleEngine:
    return engine(THRESHOLD.format(trigger=trigger), **options)
