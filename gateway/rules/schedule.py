"""Cron schedules (minute hour day-of-month month day-of-week) and their next firing time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

_DOW_NAMES = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_MONTH_NAMES = {
    m: i + 1
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
    )
}
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTH_NAMES),
    ("day of week", 0, 7, _DOW_NAMES),
)


@dataclass(frozen=True, slots=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # day of month was `*`
    any_weekday: bool  # day of week was `*`

    def day_matches(self, moment: datetime) -> bool:
        if moment.month not in self.months:
            return False
        dom = moment.day in self.days
        dow = (moment.isoweekday() % 7) in self.weekdays
        # Classic cron: when both day fields are restricted, either may match.
        if self.any_day:
            return dow
        if self.any_weekday:
            return dom
        return dom or dow


def _value(text: str, names: dict[str, int], name: str) -> int:
    lowered = text.lower()
    if lowered in names:
        return names[lowered]
    if not text.isdigit():
        raise ValueError(f"{name}: {text!r} is not a number")
    return int(text)


def _field(text: str, name: str, low: int, high: int, names: dict[str, int]) -> set[int]:
    values: set[int] = set()
    for item in text.split(","):
        step = 1
        part = item
        if "/" in item:
            part, step_text = item.split("/", 1)
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"{name}: step {step_text!r} must be a positive number")
            step = int(step_text)
        if part == "*":
            start, end = low, high
        elif "-" in part:
            a, b = part.split("-", 1)
            start, end = _value(a, names, name), _value(b, names, name)
        else:
            start = _value(part, names, name)
            end = high if step > 1 else start
        if not low <= start <= high or not low <= end <= high or start > end:
            raise ValueError(f"{name}: {part!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return values


def parse_cron(text: str) -> Cron:
    parts = text.split()
    if len(parts) != 5:
        raise ValueError(
            f"{text!r}: a schedule has 5 fields (minute hour day-of-month month day-of-week)"
        )
    sets = [
        _field(part, name, low, high, names)
        for part, (name, low, high, names) in zip(parts, _FIELDS, strict=True)
    ]
    weekdays = {d % 7 for d in sets[4]}  # 7 is Sunday too
    return Cron(
        frozenset(sets[0]),
        frozenset(sets[1]),
        frozenset(sets[2]),
        frozenset(sets[3]),
        frozenset(weekdays),
        parts[2] == "*",
        parts[4] == "*",
    )


def next_cron_time(cron: Cron, after: float, zone: ZoneInfo) -> float | None:
    """The first matching minute strictly after `after` (epoch seconds), within about 5 years."""
    moment = datetime.fromtimestamp(after, zone).replace(second=0, microsecond=0)
    day = moment.replace(hour=0, minute=0, tzinfo=None)
    first = True
    for _ in range(366 * 5):
        if cron.day_matches(day):
            for hour in sorted(cron.hours):
                for minute in sorted(cron.minutes):
                    candidate = day.replace(hour=hour, minute=minute)
                    if first and candidate < moment.replace(tzinfo=None):
                        continue
                    stamp = candidate.replace(tzinfo=zone).timestamp()
                    if stamp > after:
                        return stamp
        day += timedelta(days=1)
        first = False
    return None
