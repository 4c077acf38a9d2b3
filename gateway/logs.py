"""Log output for the CLI: one line per event as key=value (logfmt) or JSON, secrets masked,
and repeats of the same message rate-limited.

Parts log with `logging.getLogger(__name__)` and %-style arguments; only the CLI calls
`configure_logging`. Context a record carries through `extra=` (rule_id, device, sink, ...)
becomes fields of its line.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import orjson

LogFormat = Literal["logfmt", "json", "text"]

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

_SECRETS = [
    # key=value, key: value, "key": "value" for names that hold secrets
    (
        re.compile(
            r"(?i)\b((?:password|passwd|passphrase|secret|token|api[_-]?key|private[_-]?key)"
            r"[\"']?\s*[:=]\s*[\"']?)([^\s\"',;&]+)"
        ),
        r"\1***",
    ),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 ***"),
    (re.compile(r"(://[^/\s:@]+:)[^@/\s]+@"), r"\1***@"),  # credentials in a URL
]


def mask_secrets(text: str) -> str:
    """Hide values that look like passwords, tokens or URL credentials."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": mask_secrets(record.getMessage()),
    }
    for key, value in vars(record).items():
        if key not in _STANDARD and not key.startswith("_"):
            fields[key] = mask_secrets(value) if isinstance(value, str) else value
    if record.exc_info:
        fields["exc"] = mask_secrets(logging.Formatter().formatException(record.exc_info))
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps(_fields(record), default=str).decode()


_BARE = re.compile(r"^[^\s\"=]+$")


def _logfmt_value(value: Any) -> str:
    text = "" if value is None else str(value)
    if _BARE.match(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    """key=value pairs on one line (quoted when needed), as journald and Loki read them."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record).items())


class TextFormatter(logging.Formatter):
    """For a person at a terminal; secrets masked all the same."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


class RepeatFilter(logging.Filter):
    """Lets through at most `burst` records with the same logger, level, message template and
    `sink` (an `extra=` field) per `window` seconds; the first one after a quiet spell says how
    many were held back. Per sink: one sink's retries must not hide another's first failure."""

    def __init__(
        self, window: float = 60.0, burst: int = 5, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.window = window
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, int, str, Any], list[float | int]] = {}  # start, shown, held

    def filter(self, record: logging.LogRecord) -> bool:
        if self.window <= 0:
            return True
        key = (record.name, record.levelno, str(record.msg), getattr(record, "sink", None))
        now = self._clock()
        with self._lock:
            entry = self._seen.get(key)
            if entry is None or now - entry[0] >= self.window:
                held = int(entry[2]) if entry is not None else 0
                self._seen[key] = [now, 1, 0]
                if len(self._seen) > 10_000:  # many distinct messages: forget the old ones
                    cutoff = now - self.window
                    self._seen = {k: v for k, v in self._seen.items() if v[0] >= cutoff}
                if held:
                    record.repeated = held
                return True
            if entry[1] < self.burst:
                entry[1] = int(entry[1]) + 1
                return True
            entry[2] = int(entry[2]) + 1
            return False


def configure_logging(
    level: str = "info",
    fmt: LogFormat = "logfmt",
    *,
    repeat_window: float = 60.0,
    repeat_burst: int = 5,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send the root logger's records to `stream` (stderr) in the chosen format; returns the
    handler (tests remove it again)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter()
    elif fmt == "logfmt":
        formatter = LogfmtFormatter()
    else:
        formatter = TextFormatter()
    handler.setFormatter(formatter)
    handler.addFilter(RepeatFilter(repeat_window, repeat_burst))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_edge_gateway", False)]:
        root.removeHandler(old)
    handler._edge_gateway = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    return handler
