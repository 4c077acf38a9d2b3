"""A state saved by the engine before it was split into modules still restores after the split.

`snapshot_v1.json` was written by the engine of commit 48f7818 (engine.py and triggers.py in one
piece): a rule set covering every trigger type ran part of an afternoon, and its snapshot was
saved mid-flight (a pending `for`, paused and queued action sequences, open windows, sliding
series, a silent device, open alerts, armed schedule and sunset). It was then restored into the
rule set as upgraded (one rule removed, one changed), fed more readings and ticked; what came
out, the counters and the state at the end are in the file too.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.rules.actions import AlertChange, Output
from gateway.rules.engine import RuleEngine
from gateway.rules.schema import parse_rule_file
from gateway.rules.testing import R, readings

FIXTURE = Path(__file__).with_name("snapshot_v1.json")


@pytest.fixture(scope="module")
def saved() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIXTURE.read_text())
    return data


def upgraded_engine(saved: dict[str, Any]) -> RuleEngine:
    return RuleEngine(parse_rule_file({"rules": saved["rules"]}, "rules.yaml"), **saved["options"])


def as_json(outputs: list[Output]) -> list[Any]:
    return [[type(o).__name__, dataclasses.asdict(o)] for o in outputs]


def test_the_fixture_holds_state_of_every_kind(saved: dict[str, Any]) -> None:
    state = saved["snapshot"]
    assert state["version"] == 1
    rules = state["rules"]
    assert rules["freezer-warm"]["trigger"][1][2][0] == 1  # a `for` pending
    assert rules["motion-light"]["running"][0][5]  # paused, with an event queued behind
    assert rules["humid-tumbling"]["trigger"][0][2]  # an open window
    assert rules["gate-busy"]["trigger"][0][3]  # a sliding series
    assert rules["pressure-drop"]["trigger"][0][2]  # a rate series
    assert rules["lights-at-dusk"]["trigger"][0] is not None  # sunset armed
    assert {a[0] for a in state["alerts"]} >= {"retired", "lux-low", "sensors-silent"}


def test_a_state_saved_before_the_split_continues_as_it_did(saved: dict[str, Any]) -> None:
    engine = upgraded_engine(saved)
    engine.restore(copy.deepcopy(saved["snapshot"]))
    rows = [R(t, d, m, v, x, tags=tags) for t, d, m, v, x, tags in saved["readings"]]
    outputs = engine.process(readings(rows, first_id=saved["first_id"]))
    for now in saved["ticks"]:
        outputs += engine.tick(now)

    assert as_json(outputs) == saved["outputs"]
    counters = engine.counters()
    # Counters added since (clock skew) are zero: the saved readings carry no skew tags.
    assert {k: counters.pop(k) for k in saved["counters"]} == saved["counters"]
    assert set(counters.values()) <= {0}
    final = json.loads(json.dumps(engine.snapshot()))
    # Per-device timelines were added to the layout since; everything saved then is the same.
    assert final.pop("timelines")
    assert final == saved["final"]


def test_restoring_keeps_every_saved_field_of_unchanged_rules(saved: dict[str, Any]) -> None:
    engine = upgraded_engine(saved)
    engine.restore(copy.deepcopy(saved["snapshot"]))

    expected = copy.deepcopy(saved["snapshot"])
    del expected["rules"]["retired"]  # removed from the rule set
    changed = next(r for r in engine.rules if r.id == "lux-low")  # changed: starts afresh
    expected["rules"]["lux-low"] = {
        "digest": changed.digest,
        "trigger": [],
        "last_fire": [],
        "running": [],
    }
    expected["alerts"] = [a for a in expected["alerts"] if a[0] not in ("retired", "lux-low")]
    restored = json.loads(json.dumps(engine.snapshot()))
    # The old layout has no timelines: the devices whose timers were re-armed have fresh ones.
    assert all(clock is None for _device, clock, *_rest in restored.pop("timelines"))
    assert restored == expected
    # the two dropped alerts are cleared on the next call
    cleared = engine.tick(saved["snapshot"]["clock"])
    assert [(o.rule_id, o.state) for o in cleared if isinstance(o, AlertChange)] == [
        ("lux-low", "cleared"),
        ("retired", "cleared"),
    ]
    assert len(cleared) == 2
