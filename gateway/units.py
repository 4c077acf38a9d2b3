"""Parsing of human durations ("90s", "10m", "7d") and sizes ("512MiB") used in config and CLI."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$", re.IGNORECASE)
_SIZE_BYTES = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_duration(text: str | float | int) -> float:
    """Seconds in a duration such as `250ms`, `30s`, `10m` or `7d`; a bare number is seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        if text < 0:
            raise ValueError("must not be negative")
        return float(text)
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a duration (examples: 500ms, 30s, 10m, 24h, 7d)")
    number, unit = match.groups()
    return float(number) * _DURATION_SECONDS[unit or "s"]


def parse_size(text: str | int) -> int:
    """Bytes in a size such as `512MiB`, `2GB` or a bare number of bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError("must not be negative")
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a size (examples: 65536, 64KiB, 512MiB, 2GB)")
    number, unit = match.groups()
    return int(float(number) * _SIZE_BYTES[(unit or "b").lower()])


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds, written in config as `30s`, `10m`, `7d` or a number of seconds."""

Size = Annotated[int, BeforeValidator(parse_size)]
"""Bytes, written in config as `64KiB`, `1GiB` or a number of bytes."""
