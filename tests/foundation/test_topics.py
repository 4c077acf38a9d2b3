"""MQTT topic filters: what is a valid filter, and what a filter matches (MQTT 3.1.1, 4.7)."""

from __future__ import annotations

import re

import pytest

from gateway.topics import (
    covers,
    matches,
    overlaps,
    route_filter,
    validate_filter,
    validate_publish_topic,
)


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("sensors/+/temp", "sensors/kitchen/temp", True),
        ("sensors/+/temp", "sensors/kitchen/hum", False),
        ("sensors/+/temp", "sensors/a/b/temp", False),
        ("sensors/#", "sensors", True),  # '#' also matches the parent level
        ("sensors/#", "sensors/a/b", True),
        ("sensors/#", "other/a", False),
        ("#", "$SYS/broker/uptime", False),  # wildcards first never match '$' topics
        ("+/x", "$edge-gateway/x", False),
        ("$SYS/#", "$SYS/broker/uptime", True),
        ("a/b", "a/b", True),
        ("a/b", "a/b/c", False),
        ("+", "", True),  # one empty level
    ],
)
def test_a_filter_matches_what_mqtt_says(topic_filter: str, topic: str, expected: bool) -> None:
    assert matches(validate_filter(topic_filter), topic) is expected


@pytest.mark.parametrize(
    ("topic_filter", "error"),
    [
        ("", "must not be empty"),
        ("a/#/b", "'#' must be a whole level and the last one"),
        ("a/b#", "'#' must be a whole level"),
        ("a/b+/c", "'+' must be a whole level"),
    ],
)
def test_an_invalid_filter_is_refused_with_the_reason(topic_filter: str, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        validate_filter(topic_filter)


@pytest.mark.parametrize("topic", ["", "home/+/set", "home/#"])
def test_a_publish_topic_has_no_wildcards(topic: str) -> None:
    with pytest.raises(ValueError, match="no \\+ or #"):
        validate_publish_topic(topic)


@pytest.mark.parametrize(
    ("topic_filter", "other", "covered", "overlapping"),
    [
        ("zigbee2mqtt/#", "zigbee2mqtt/#", True, True),
        ("zigbee2mqtt/+", "zigbee2mqtt/#", False, True),
        ("#", "a/+/b", True, True),
        ("a/+/b", "a/x/b", True, True),
        ("a/x/b", "a/+/b", False, True),
        ("a/+", "a/+/b", False, False),
        ("a/#", "a", True, True),
        ("b/#", "a/#", False, False),
        ("tele/+/SENSOR", "tele/+/LWT", False, False),
        ("a/+/+", "a/#", False, True),
    ],
)
def test_filter_covers_and_overlaps(
    topic_filter: str, other: str, covered: bool, overlapping: bool
) -> None:
    assert covers(topic_filter, other) is covered
    assert overlaps(topic_filter, other) is overlapping


def test_route_filter_is_the_narrowest_that_receives_a_pattern() -> None:
    assert route_filter("sensors/{site}/{device}/{metric}") == "sensors/+/+/+"
    assert route_filter("zigbee2mqtt/{device...}/availability") == "zigbee2mqtt/#"
    assert route_filter("legacy/{device}/#") == "legacy/+/#"
