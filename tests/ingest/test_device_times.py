"""Device times as a route trusts them: the zone of zone-less times (Tasmota's `Time`), and the
skew policy that tags readings whose device time is too far from their arrival. The stored
event time stays the device's; nothing is lost or quarantined for a wrong clock."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from gateway.config import RouteConfig, load_config
from gateway.errors import ConfigError
from gateway.ingest.decoding import BatchDecoder
from gateway.ingest.redelivery import RedeliveryFilter
from gateway.ingest.routing import TopicRouter
from gateway.model import RawMessage

NOW = 1_790_000_000.0  # 2026-09-21 14:13:20 UTC, 16:13:20 in Berlin (summer time)


def decode(routes: list[dict[str, Any]], topic: str, payload: dict[str, Any]) -> dict[str, Any]:
    decoder = BatchDecoder(
        TopicRouter([RouteConfig.model_validate(r) for r in routes]), RedeliveryFilter(), 10_000
    )
    message = RawMessage(topic, orjson.dumps(payload), 0, 0, False, False, NOW)
    batch = decoder.decode([message])
    assert batch.quarantine.num_rows == 0
    row: dict[str, Any] = batch.readings.to_pylist()[0]
    row["tags"] = orjson.loads(row["tags"]) if row["tags"] else {}
    row["event_time"] = row["event_time"].timestamp()
    return row


TASMOTA = {"pattern": "tele/{device}/SENSOR", "decoder": "tasmota"}
SENSORS = {"pattern": "sensors/{site}/{device}/{metric}"}


def test_tasmota_local_time_is_read_in_the_routes_zone() -> None:
    local = datetime.fromtimestamp(NOW, ZoneInfo("Europe/Berlin")).replace(tzinfo=None)
    payload = {"Time": local.isoformat(timespec="seconds"), "AM2301": {"Temperature": 21.5}}
    as_utc = decode([TASMOTA], "tele/hall/SENSOR", payload)
    assert as_utc["event_time"] == NOW + 7200  # read as UTC: two hours ahead...
    assert as_utc["tags"] == {"clock_skew": "adjusted"}  # ...so the rules do not trust it
    zoned = decode([{**TASMOTA, "timezone": "Europe/Berlin"}], "tele/hall/SENSOR", payload)
    assert zoned["event_time"] == NOW
    assert zoned["tags"] == {}


def test_a_time_with_its_own_offset_ignores_the_routes_zone() -> None:
    route = {**SENSORS, "timezone": "America/New_York"}
    row = decode([route], "sensors/home/d/t", {"value": 1, "ts": "2026-09-21T14:13:20+00:00"})
    assert row["event_time"] == NOW


@pytest.mark.parametrize(
    ("offset", "route", "verdict"),
    [
        (-10.0, {}, None),  # ten seconds behind: trusted
        (3600.0, {}, "adjusted"),  # an hour ahead, past the default 5 minutes
        (-86400.0, {}, "adjusted"),  # a day back
        (-86400.0, {"clock_skew": "drop"}, "dropped"),
        (3600.0, {"max_clock_skew": "2h"}, None),
        (-86400.0 * 365 * 30, {"max_clock_skew": None}, None),  # taken as sent
    ],
)
def test_skew_policy_tags_and_keeps_the_device_time(
    offset: float, route: dict[str, Any], verdict: str | None
) -> None:
    routes = [{**SENSORS, **route}]
    row = decode(routes, "sensors/home/d/t", {"value": 1, "ts": NOW + offset})
    assert row["event_time"] == NOW + offset  # stored as the device sent it
    assert row["ingest_time"].timestamp() == NOW
    expected = {"site": "home"} if verdict is None else {"site": "home", "clock_skew": verdict}
    assert row["tags"] == expected


def test_a_reading_without_a_time_is_never_skewed() -> None:
    row = decode([{**SENSORS, "max_clock_skew": "1s"}], "sensors/home/d/t", {"value": 1})
    assert row["event_time"] == NOW
    assert row["tags"] == {"site": "home"}


def test_bad_device_time_settings_name_the_route(tmp_path: Any) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "routes:\n"
        "  - pattern: tele/{device}/SENSOR\n"
        "    decoder: tasmota\n"
        "    timezone: Mars/Olympus\n"
        "  - pattern: sensors/{site}/{device}/{metric}\n"
        "    clock_skew: ignore\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    text = str(caught.value)
    assert "routes.0.timezone" in text and "Mars/Olympus" in text
    assert "routes.1.clock_skew" in text
