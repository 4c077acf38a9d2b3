"""MQTT topic filters, in one place: validate a filter or a publish topic, match topics.

MQTT 3.1.1 section 4.7: `+` stands for one whole level, `#` for every level after it (none
too: `a/#` matches `a`) and only as the last level. A filter that starts with a wildcard does
not match topics that start with `$`, the broker's own (and the gateway's ack barrier).
"""

from __future__ import annotations

from collections.abc import Callable


def validate_filter(topic: str) -> str:
    """The filter itself, or ValueError saying what is wrong with it."""
    if not topic:
        raise ValueError("a topic filter must not be empty")
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"{topic!r}: '#' must be a whole level and the last one")
        if "+" in level and level != "+":
            raise ValueError(f"{topic!r}: '+' must be a whole level")
    return topic


def validate_publish_topic(topic: str) -> str:
    """A topic to publish to: non-empty and without wildcards, or ValueError."""
    if not topic or "+" in topic or "#" in topic:
        raise ValueError(f"{topic!r}: a publish topic must be non-empty and have no + or #")
    return topic


def matcher(topic_filter: str) -> Callable[[str], bool]:
    """A function telling whether a topic matches the (valid) filter."""
    levels = topic_filter.split("/")
    if "+" not in levels and "#" not in levels:
        return topic_filter.__eq__
    wildcard_first = levels[0] in ("+", "#")

    def match(topic: str) -> bool:
        if wildcard_first and topic.startswith("$"):
            return False
        parts = topic.split("/")
        for i, level in enumerate(levels):
            if level == "#":
                return True
            if i >= len(parts) or (level != "+" and level != parts[i]):
                return False
        return len(parts) == len(levels)

    return match


def matches(topic_filter: str, topic: str) -> bool:
    return matcher(topic_filter)(topic)


def route_filter(pattern: str) -> str:
    """The narrowest MQTT filter that receives every topic a route pattern matches: `{name}`
    is `+`, a multi-level `{name...}` and all after it `#`."""
    levels: list[str] = []
    for level in pattern.split("/"):
        if level.endswith("...}"):
            levels.append("#")
            break
        levels.append("+" if level.startswith("{") else level)
    return "/".join(levels)


def covers(topic_filter: str, other: str) -> bool:
    """Whether every topic `other` (a valid filter) matches also matches `topic_filter`."""
    mine, theirs = topic_filter.split("/"), other.split("/")
    for i, level in enumerate(mine):
        if level == "#":
            return True
        if i >= len(theirs) or theirs[i] == "#":
            return False
        if level != "+" and (theirs[i] == "+" or theirs[i] != level):
            return False
    return len(mine) == len(theirs)


def overlaps(topic_filter: str, other: str) -> bool:
    """Whether some topic matches both filters."""
    mine, theirs = topic_filter.split("/"), other.split("/")
    for i, level in enumerate(mine):
        if level == "#" or (i < len(theirs) and theirs[i] == "#"):
            return True
        if i >= len(theirs):
            return False
        if "+" not in (level, theirs[i]) and level != theirs[i]:
            return False
    return len(mine) == len(theirs) or (len(theirs) == len(mine) + 1 and theirs[-1] == "#")
