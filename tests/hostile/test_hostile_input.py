"""Hostile input, generated: whatever devices, topics, config files and rule files hold, the
gateway does not crash or hang; bad input becomes quarantine rows or clear errors, and memory
stays bounded for oversized payloads and floods of new topics and devices."""

from __future__ import annotations

import contextlib
import json
import os
import tracemalloc
from typing import Any

import pyarrow as pa
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import RouteConfig, parse_config
from gateway.errors import ConfigError, RuleError
from gateway.ingest.decoding import QUARANTINE_KEEP_BYTES, BatchDecoder
from gateway.ingest.redelivery import RedeliveryFilter
from gateway.ingest.routing import TopicRouter
from gateway.model import DECODED_READINGS_SCHEMA, RawMessage
from gateway.rules.schema import parse_rule_file

# Code under test draws from the global `random` on its first call (lazy imports and jittered
# back-offs); Hypothesis reports that as strategy misuse and pytest turns it into a failure.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)


def examples(ci: int) -> int:
    """Examples per property: `ci` by default; FUZZ_EXAMPLES=20000 for a long fuzz run."""
    return int(os.environ.get("FUZZ_EXAMPLES", ci))


DECODERS = ["auto", "number", "text", "json", "zigbee2mqtt", "tasmota", "statestream", "shelly",
            "tasmota_stat", "shelly_gen1", "esphome", "homie", "availability"]  # fmt: skip
ROUTES = [
    RouteConfig(pattern=f"{name}/{{site}}/{{device}}/{{metric}}", decoder=name)  # type: ignore[arg-type]
    for name in DECODERS
] + [
    RouteConfig(pattern="spBv1.0/{group}/+/{device}", decoder="sparkplug"),
    RouteConfig(pattern="spBv1.0/{group}/+/{node}/{device}", decoder="sparkplug"),
    RouteConfig(pattern="flat/{device}", decoder="json"),
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=40,
)
payloads = st.one_of(
    st.binary(max_size=300),
    # The standard library writes what orjson refuses: huge integers, NaN, Infinity.
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(
        st.sampled_from(["ts", "time", "timestamp", "value", "unit", "method", "params", "Time"]),
        json_values,
        max_size=5,
    ).map(lambda d: json.dumps(d).encode()),
)
topic_levels = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), max_size=12
)
topics = st.one_of(
    st.tuples(st.sampled_from([*DECODERS, "spBv1.0", "flat", "nowhere"]),
              st.lists(topic_levels, min_size=0, max_size=5))
    .map(lambda t: "/".join([t[0], *t[1]])),
    topic_levels,
)  # fmt: skip


def message(topic: str, payload: bytes, mid: int = 1, dup: bool = False) -> RawMessage:
    return RawMessage(topic, payload, 1, mid, dup, False, 1_700_000_000.0)


def decoder(max_payload: int = 10_000) -> BatchDecoder:
    return BatchDecoder(TopicRouter(ROUTES), RedeliveryFilter(), max_payload)


@settings(max_examples=examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(topics, payloads, st.booleans()), min_size=1, max_size=8))
def test_every_message_becomes_readings_or_a_quarantine_row_never_an_exception(
    batch: list[tuple[str, bytes, bool]],
) -> None:
    messages = [message(t, p, mid=i + 1, dup=d) for i, (t, p, d) in enumerate(batch)]
    result = decoder().decode(messages)
    assert result.readings.schema == DECODED_READINGS_SCHEMA
    # Each message was kept (readings or quarantine) unless it was a recognised redelivery,
    # and a fresh decoder knows none.
    assert result.duplicates == 0
    assert len(result.messages) == len(messages)
    reasons = result.quarantine.column("reason").to_pylist()
    assert all(isinstance(r, str) and r for r in reasons)
    for column in ("device", "metric", "topic"):
        assert result.readings.column(column).null_count == 0


def test_an_oversized_payload_is_quarantined_with_a_bounded_head() -> None:
    huge = b"{" + b'"a":1,' * 5_000_000 + b'"b":2}'  # 30 MB of JSON
    tracemalloc.start()
    try:
        result = decoder(max_payload=256 * 1024).decode([message("json/s/d/m", huge)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.readings.num_rows == 0
    row = result.quarantine.to_pylist()[0]
    assert row["payload_bytes"] == len(huge)
    assert len(row["payload"]) == QUARANTINE_KEEP_BYTES
    assert "exceeds max_payload_bytes" in row["reason"]
    assert peak < 5 * 1024 * 1024  # never parsed, never copied whole


def test_a_flood_of_new_topics_and_devices_keeps_memory_bounded() -> None:
    from gateway.ingest.shelly import ShellyDecoder

    router = TopicRouter(ROUTES)
    shelly = ShellyDecoder()
    status = b'{"method":"NotifyFullStatus","params":{"switch:0":{"output":true}}}'

    def flood(start: int, n: int) -> None:
        for i in range(start, start + n):
            topic = f"shelly/s/dev{i}/rpc"
            match = router.route(topic)
            assert match is not None
            shelly.decode_message(message(topic, status), match)

    flood(0, 101_000)  # past both caches' limits (100,000 topics, 100,000 devices)
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        flood(101_000, 120_000)
        grown, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 120,000 more distinct topics and devices: the caches were cleared, not grown.
    assert grown - baseline < 60 * 1024 * 1024
    per_device = (grown - baseline) / 120_000
    assert per_device < 300, f"{per_device:.0f} bytes kept per new device"


def test_deeply_nested_json_is_quarantined_not_a_recursion_crash() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    nested = b'{"a":' * 5_000 + b"1" + b"}" * 5_000
    result = decoder(max_payload=1_000_000).decode(
        [message("json/s/d/m", deep, 1), message("flat/d", nested, 2)]
    )
    assert result.quarantine.num_rows + result.readings.num_rows >= 1
    assert result.quarantine.num_rows == 2 or result.readings.num_rows > 0


@settings(max_examples=examples(500), deadline=None)
@given(topics)
def test_the_router_answers_every_topic(topic: str) -> None:
    match = TopicRouter(ROUTES).route(topic)
    if match is not None:
        assert match.device and "/" not in match.device


yaml_documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(
            ["mqtt", "buffer", "api", "routes", "sinks", "rules", "port", "host", "path",
             "pattern", "decoder", "type", "name", "token", "password", "retention", "max_bytes",
             "on_full", "location", "subscriptions", "topic", "qos", "x"]
        ) | st.text(max_size=8),
        children,
        max_size=5,
    ),
    max_leaves=25,
)  # fmt: skip


@settings(max_examples=examples(400), deadline=None)
@given(yaml_documents)
def test_the_config_loader_accepts_or_lists_problems(data: Any) -> None:
    try:
        parse_config(data, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.problems
        assert all(isinstance(p, str) and ":" in p for p in exc.problems)


@settings(max_examples=examples(300), deadline=None)
@given(text=st.text(max_size=400))
def test_config_text_that_is_not_yaml_gives_a_line_and_column(
    text: str, tmp_path_factory: Any
) -> None:
    from gateway.config import load_config

    path = tmp_path_factory.mktemp("cfg") / "gateway.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.problems


rule_documents = st.fixed_dictionaries(
    {
        "rules": st.lists(
            st.dictionaries(
                st.sampled_from(["id", "select", "trigger", "conditions", "actions", "cooldown",
                                 "enabled", "description", "x"]),
                yaml_documents,
                max_size=6,
            ),
            max_size=3,
        )
    }
)  # fmt: skip


@settings(max_examples=examples(400), deadline=None)
@given(st.one_of(rule_documents, yaml_documents))
def test_the_rule_file_parser_accepts_or_names_the_problem(data: Any) -> None:
    try:
        parse_rule_file(data, "fuzz.yaml")
    except RuleError as exc:
        assert "fuzz.yaml" in str(exc)


@pytest.mark.parametrize(
    "text",
    [
        "rules: [{id: a, trigger: {type: threshold, above: 1e999}}]",
        "rules: &a [*a]",
        "a: &a [*a, *a, *a]\nrules: []",
        "rules:\n  - id: " + "x" * 100_000,
    ],
)
def test_pathological_rule_yaml_is_handled(text: str) -> None:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return
    with contextlib.suppress(RuleError):
        parse_rule_file(data, "odd.yaml")


def test_arrow_tables_stay_typed_for_empty_batches() -> None:
    result = decoder().decode([])
    assert result.readings.num_rows == 0
    assert isinstance(result.readings, pa.Table)
