"""The default routes send each documented topic of each format to its decoder, device and
metric; the routes for Tasmota answers, Shelly Gen1, Homie, ESPHome and availability come after
the older ones, so they take no topic from them."""

from __future__ import annotations

import pytest

from gateway.config import GatewayConfig, RouteConfig
from gateway.ingest.routing import TopicRouter

ROUTES = GatewayConfig().routes
ROUTER = TopicRouter(ROUTES)

# The formats routed before these routes were added, with topics of each.
EARLIER = [
    ("sensors/home/kitchen/temperature", "auto", "kitchen", "temperature"),
    ("sensors/home/kitchen/state", "auto", "kitchen", "state"),
    ("zigbee2mqtt/bridge/state", "ignore", "zigbee2mqtt", None),
    ("zigbee2mqtt/kitchen/door", "zigbee2mqtt", "kitchen/door", None),
    ("zigbee2mqtt/lamp/availability", "availability", "lamp", None),
    ("zigbee2mqtt/lamp/status", "zigbee2mqtt", "lamp/status", None),
    ("zigbee2mqtt/lamp/set", "ignore", "lamp", None),
    ("tele/plug/SENSOR", "tasmota", "plug", None),
    ("tele/plug/STATE", "tasmota", "plug", None),
    ("shellyplus1pm-1/events/rpc", "shelly", "shellyplus1pm-1", None),
    ("stat/events/rpc", "shelly", "stat", None),  # a Gen2 device whose id is `stat`
    ("homie/events/rpc", "shelly", "homie", None),
    ("homeassistant/sensor/kitchen/state", "statestream", "kitchen", "state"),
    ("homeassistant/light/hall/brightness", "statestream", "hall", "brightness"),
    ("homeassistant/sensor/node/config", "statestream", "node", "config"),
    ("spBv1.0/factory/NBIRTH/edge-1", "sparkplug", "edge-1", None),
    ("spBv1.0/factory/DDATA/edge-1/press-7", "sparkplug", "press-7", None),
]  # fmt: skip

ADDED = [
    # Tasmota
    ("tele/plug/LWT", "availability", "plug", None),
    ("tele/plug/INFO1", "ignore", "plug", None),
    ("tele/plug/INFO3", "ignore", "plug", None),
    ("stat/plug/RESULT", "tasmota_stat", "plug", "RESULT"),
    ("stat/plug/POWER", "tasmota_stat", "plug", "POWER"),
    ("stat/plug/POWER2", "tasmota_stat", "plug", "POWER2"),
    ("stat/plug/STATUS10", "tasmota_stat", "plug", "STATUS10"),
    ("stat/plug/STATUS11", "tasmota_stat", "plug", "STATUS11"),
    ("cmnd/plug/POWER", "ignore", "plug", None),
    ("cmnd/tasmotas/Status", "ignore", "tasmotas", None),
    # Shelly Gen1
    ("shellies/shelly1pm-A1/relay/0", "shelly_gen1", "shelly1pm-A1", "relay.0"),
    ("shellies/shelly1pm-A1/relay/0/power", "shelly_gen1", "shelly1pm-A1", "relay.0.power"),
    ("shellies/shelly1pm-A1/relay/0/energy", "shelly_gen1", "shelly1pm-A1", "relay.0.energy"),
    ("shellies/shellyht-B2/sensor/temperature", "shelly_gen1", "shellyht-B2", "sensor.temperature"),
    ("shellies/shellyht-B2/sensor/battery", "shelly_gen1", "shellyht-B2", "sensor.battery"),
    ("shellies/shellyem3-C3/emeter/2/power", "shelly_gen1", "shellyem3-C3", "emeter.2.power"),
    ("shellies/shellyem3-C3/emeter/2/total", "shelly_gen1", "shellyem3-C3", "emeter.2.total"),
    ("shellies/shelly1-D4/input_event/0", "shelly_gen1", "shelly1-D4", "input_event.0"),
    ("shellies/shelly1-D4/temperature", "shelly_gen1", "shelly1-D4", "temperature"),
    ("shellies/shellytrv-E5/valve/0/state", "shelly_gen1", "shellytrv-E5", "valve.0.state"),
    ("shellies/shelly1pm-A1/online", "availability", "shelly1pm-A1", None),
    ("shellies/shelly1pm-A1/announce", "ignore", "shelly1pm-A1", None),
    ("shellies/shelly1pm-A1/info", "ignore", "shelly1pm-A1", None),
    ("shellies/shelly1pm-A1/command", "ignore", "shelly1pm-A1", None),
    ("shellies/shelly1pm-A1/relay/0/command", "ignore", "shelly1pm-A1", "relay.0"),
    ("shellies/shellyswitch25-F6/roller/0/command/pos", "ignore", "shellyswitch25-F6", "roller.0"),
    ("shellies/shellydimmer-G7/light/0/set", "ignore", "shellydimmer-G7", "light.0"),
    ("shellies/announce", "ignore", "shellies", None),
    ("shellies/command", "ignore", "shellies", None),
    # Shelly Gen2
    ("shellyplus1pm-1/online", "availability", "shellyplus1pm-1", None),
    # ESPHome
    ("livingroom/sensor/temperature/state", "esphome", "livingroom", "temperature"),
    ("livingroom/binary_sensor/motion/state", "esphome", "livingroom", "motion"),
    ("livingroom/switch/relay/state", "esphome", "livingroom", "relay"),
    ("livingroom/text_sensor/version/state", "esphome", "livingroom", "version"),
    ("livingroom/light/desk_lamp/state", "esphome", "livingroom", "desk_lamp"),
    ("livingroom/climate/hvac/current_temperature/state", "esphome", "livingroom",
     "hvac.current_temperature"),
    ("livingroom/status", "availability", "livingroom", None),
    ("livingroom/debug", "ignore", "livingroom", None),
    ("livingroom/switch/relay/command", "ignore", "livingroom", "relay"),
    ("livingroom/climate/hvac/mode/command", "ignore", "livingroom", "hvac.mode"),
    # Homie
    ("homie/boiler/$state", "homie", "boiler", "$state"),
    ("homie/boiler/$name", "homie", "boiler", "$name"),
    ("homie/boiler/$stats/uptime", "homie", "boiler", "$stats.uptime"),
    ("homie/boiler/heating/temperature", "homie", "boiler", "heating.temperature"),
    ("homie/boiler/heating/temperature/$unit", "homie", "boiler", "heating.temperature.$unit"),
    ("homie/boiler/heating/temperature/set", "homie", "boiler", "heating.temperature.set"),
    ("homie/$broadcast/alert", "homie", "$broadcast", "alert"),
    # Home Assistant's own status
    ("homeassistant/status", "availability", "homeassistant", None),
]  # fmt: skip


@pytest.mark.parametrize(("topic", "decoder", "device", "metric"), EARLIER + ADDED)
def test_each_documented_topic_reaches_its_decoder_device_and_metric(
    topic: str, decoder: str, device: str, metric: str | None
) -> None:
    match = ROUTER.route(topic)
    assert match is not None, topic
    assert (match.decoder, match.device, match.metric) == (decoder, device, metric)


def test_the_added_routes_come_after_the_earlier_ones_so_they_take_none_of_their_topics() -> None:
    earlier = [
        "sensors/{site}/{device}/{metric}",
        "zigbee2mqtt/{device...}",
        "tele/{device}/SENSOR",
        "tele/{device}/STATE",
        "{device}/events/rpc",
        "homeassistant/{domain}/{device}/{metric}",
        "spBv1.0/{group}/+/{device}",
        "spBv1.0/{group}/+/{node}/{device}",
    ]
    patterns = [r.pattern for r in ROUTES]
    first_added = patterns.index("tele/{device}/LWT")
    assert max(patterns.index(p) for p in earlier) < first_added
    # And the earlier formats' topics route as they did with only the earlier routes.
    before = TopicRouter([r for r in ROUTES if patterns.index(r.pattern) < first_added])
    for topic, *_ in EARLIER:
        old, new = before.route(topic), ROUTER.route(topic)
        assert old is not None and new is not None
        assert (old.decoder, old.device, old.metric) == (new.decoder, new.device, new.metric)


def test_esphome_routes_are_last_because_they_match_any_first_level() -> None:
    patterns = [r.pattern for r in ROUTES]
    general = [i for i, p in enumerate(patterns) if p.startswith("{device}/") and "rpc" not in p]
    assert general == list(range(len(patterns) - len(general), len(patterns)))


def test_esphome_component_is_a_tag() -> None:
    match = ROUTER.route("livingroom/binary_sensor/motion/state")
    assert match is not None and match.tags_json == '{"component":"binary_sensor"}'


def test_unknown_topics_of_the_new_prefixes_still_match_nothing() -> None:
    for topic in ("stat/plug", "shellies/x", "homie/boiler", "livingroom/sensor/state", "tele/p/X"):
        assert ROUTER.route(topic) is None, topic


def test_default_routes_are_valid_route_configs() -> None:
    for route in ROUTES:
        assert RouteConfig.model_validate(route.model_dump()) == route
