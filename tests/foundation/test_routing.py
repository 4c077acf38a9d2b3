"""Topic routing: named segments, wildcards, first match wins."""

from __future__ import annotations

from gateway.config import RouteConfig
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
