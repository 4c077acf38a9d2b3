"""Sunrise and sunset computed offline with NOAA's solar equations (accurate to about a minute)."""

from __future__ import annotations

import math
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

# The sun's centre 0.833 degrees below the horizon: refraction plus the solar disc's radius.
_ZENITH = math.radians(90.833)
_J2000 = 2451545.0


def _julian_day(day: date) -> float:
    """Julian day at 0h UTC of a calendar date."""
    return day.toordinal() + 1721424.5


def _solar_times(jd: float, latitude: float, longitude: float) -> tuple[float, float | None]:
    """(solar noon, half day arc) in minutes after 0h UTC; the arc is None in polar day/night."""
    jc = (jd - _J2000) / 36525.0
    mean_long = (280.46646 + jc * (36000.76983 + jc * 0.0003032)) % 360.0
    mean_anom = 357.52911 + jc * (35999.05029 - 0.0001537 * jc)
    ecc = 0.016708634 - jc * (0.000042037 + 0.0000001267 * jc)
    m = math.radians(mean_anom)
    centre = (
        math.sin(m) * (1.914602 - jc * (0.004817 + 0.000014 * jc))
        + math.sin(2 * m) * (0.019993 - 0.000101 * jc)
        + math.sin(3 * m) * 0.000289
    )
    omega = math.radians(125.04 - 1934.136 * jc)
    apparent_long = math.radians(mean_long + centre - 0.00569 - 0.00478 * math.sin(omega))
    mean_obliq = (
        23.0 + (26.0 + (21.448 - jc * (46.815 + jc * (0.00059 - jc * 0.001813))) / 60.0) / 60.0
    )
    obliq = math.radians(mean_obliq + 0.00256 * math.cos(omega))
    declination = math.asin(math.sin(obliq) * math.sin(apparent_long))
    y = math.tan(obliq / 2) ** 2
    l0 = math.radians(mean_long)
    eq_of_time = 4 * math.degrees(
        y * math.sin(2 * l0)
        - 2 * ecc * math.sin(m)
        + 4 * ecc * y * math.sin(m) * math.cos(2 * l0)
        - 0.5 * y * y * math.sin(4 * l0)
        - 1.25 * ecc * ecc * math.sin(2 * m)
    )
    noon = 720.0 - 4.0 * longitude - eq_of_time
    lat = math.radians(latitude)
    cos_ha = math.cos(_ZENITH) / (math.cos(lat) * math.cos(declination)) - math.tan(lat) * math.tan(
        declination
    )
    if not -1.0 <= cos_ha <= 1.0:
        return noon, None
    return noon, 4.0 * math.degrees(math.acos(cos_ha))


@lru_cache(maxsize=4096)
def sun_times(day: date, latitude: float, longitude: float) -> tuple[float | None, float | None]:
    """(sunrise, sunset) of a local calendar date as epoch seconds; None when the sun does not
    rise or set that day (polar regions)."""
    midnight = datetime.combine(day, time(0), tzinfo=ZoneInfo("UTC")).timestamp()
    # Evaluate the equations near the day's solar noon for better accuracy.
    jd = _julian_day(day) + 0.5 - longitude / 360.0
    noon, arc = _solar_times(jd, latitude, longitude)
    if arc is None:
        return None, None
    return midnight + (noon - arc) * 60.0, midnight + (noon + arc) * 60.0


def local_date(epoch: float, zone: ZoneInfo) -> date:
    return datetime.fromtimestamp(epoch, zone).date()


def next_sun_event(
    after: float, event: str, offset: float, latitude: float, longitude: float, zone: ZoneInfo
) -> float | None:
    """The first sunrise/sunset (+ offset) strictly after `after`, within the next year."""
    day = local_date(after, zone) - timedelta(days=1)
    for _ in range(370):
        rise, set_ = sun_times(day, latitude, longitude)
        moment = rise if event == "sunrise" else set_
        if moment is not None and moment + offset > after:
            return moment + offset
        day += timedelta(days=1)
    return None
