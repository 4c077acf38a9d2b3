"""MQTT topic filters: what is a valid filter, and what a filter matches (MQTT 3.1.1, 4.7)."""

from __future__ import annotations

import re

import pytest

from gateway.topics import matches, validate_filter, validate_publish_topic


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
