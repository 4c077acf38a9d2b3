"""Topic routing: named segments, wildcards, first match wins."""

from __future__ import annotations

import pytest

from gateway.config import GatewayConfig, RouteConfig
from gateway.ingest.routing import TopicRouter


def test_named_segments_fill_device_metric_and_tags() -> None:
    router = TopicRouter([RouteConfig(pattern="sensors/{site}/{device}/{metric}")])
    match = router.route("sensors/home/kitchen/temperature")
    assert match is not None
    assert (match.device, match.metric, match.tags_json) == (
        "kitchen",
        "temperature",
        '{"site":"home"}',
    )


def test_topic_with_wrong_depth_matches_nothing() -> None:
    router = TopicRouter([RouteConfig(pattern="sensors/{site}/{device}/{metric}")])
    assert router.route("sensors/home/kitchen") is None
    assert router.route("sensors/home/kitchen/temperature/extra") is None


def test_plus_and_hash_wildcards() -> None:
    router = TopicRouter(
        [
            RouteConfig(pattern="plant/+/{device}/{metric}", tags={"area": "plant"}),
            RouteConfig(pattern="legacy/{device}/#", metric="raw", decoder="text"),
        ]
    )
    plant = router.route("plant/line1/press-3/pressure")
    assert plant is not None and plant.device == "press-3" and plant.metric == "pressure"
    assert plant.tags_json == '{"area":"plant"}'
    legacy = router.route("legacy/boiler/a/b/c")
    assert legacy is not None and legacy.device == "boiler" and legacy.metric == "raw"
    assert legacy.decoder == "text"


def test_first_matching_route_wins() -> None:
    router = TopicRouter(
        [
            RouteConfig(
                pattern="zigbee2mqtt/{device}/availability", decoder="text", metric="availability"
            ),
            RouteConfig(pattern="zigbee2mqtt/{device}", decoder="zigbee2mqtt"),
        ]
    )
    first = router.route("zigbee2mqtt/lamp/availability")
    assert first is not None and first.metric == "availability"
    second = router.route("zigbee2mqtt/lamp")
    assert second is not None and second.decoder == "zigbee2mqtt" and second.metric is None


def test_route_cache_stays_bounded_under_a_topic_flood() -> None:
    router = TopicRouter([RouteConfig(pattern="s/{device}/{metric}")])
    for i in range(120_000):
        router.route(f"s/dev{i}/m")
    assert len(router._cache) <= 100_000


def test_multi_level_capture_takes_every_level_of_a_name() -> None:
    router = TopicRouter(GatewayConfig().routes)
    door = router.route("zigbee2mqtt/kitchen/door")
    assert door is not None and (door.device, door.decoder) == ("kitchen/door", "zigbee2mqtt")
    plain = router.route("zigbee2mqtt/sensor")
    assert plain is not None and plain.device == "sensor"
    online = router.route("zigbee2mqtt/kitchen/door/availability")
    assert online is not None
    assert (online.device, online.decoder) == ("kitchen/door", "availability")
    for command in ("set", "set/state", "get", "get/brightness"):
        told = router.route(f"zigbee2mqtt/kitchen/door/{command}")
        assert told is not None and (told.device, told.decoder) == ("kitchen/door", "ignore")
    bridge = router.route("zigbee2mqtt/bridge/state")
    assert bridge is not None and bridge.decoder == "ignore"
    assert router.route("zigbee2mqtt") is None
    assert router.route("zigbee2mqtt//availability") is None  # an empty level names nothing


def test_multi_level_metric_joins_levels_with_dots_and_tags_keep_slashes() -> None:
    router = TopicRouter(
        [
            RouteConfig(pattern="shellies/{device}/{metric...}"),
            RouteConfig(pattern="site/{area...}/{device}/{metric}"),
        ]
    )
    power = router.route("shellies/shelly1-A1/relay/0/power")
    assert power is not None and (power.device, power.metric) == ("shelly1-A1", "relay.0.power")
    deep = router.route("site/hall/2/west/pump-1/pressure")
    assert deep is not None and (deep.device, deep.metric) == ("pump-1", "pressure")
    assert deep.tags_json == '{"area":"hall/2/west"}'
    assert router.route("site/pump-1/pressure") is None  # the capture takes one level at least


def test_multi_level_capture_patterns_are_checked() -> None:
    for pattern, says in (
        ("a/{device...}/{metric...}", "only one multi-level capture"),
        ("a/{device...}/#", "cannot mix"),
        ("a/{dev ice...}", "not a valid segment name"),
        ("a/{device...}/{device}", "appears twice"),
    ):
        with pytest.raises(ValueError, match=says):
            RouteConfig(pattern=pattern)
    assert RouteConfig(pattern="z/{device...}").device is None  # names the device
