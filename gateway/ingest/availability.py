"""Availability: a device going online or offline, as every format says it.

Zigbee2MQTT `<name>/availability` (`{"state":"online"}`, or plain `online` before 1.22),
Tasmota `tele/<t>/LWT` (`Online`/`Offline`), Shelly `<id>/online` (`true`/`false`), ESPHome
`<node>/status`, Home Assistant `.../availability`, Homie `$state` and Sparkplug births and
deaths all become one reading: metric `availability`, value 1.0 (online) or 0.0 (offline),
text `online` or `offline`. It is stored like any reading, so SQL, the device registry and
rules (`state` on `availability`, or the `availability` trigger) read one fact.
"""

from __future__ import annotations

import orjson

from gateway.errors import DecodeError
from gateway.model import Decoded

METRIC = "availability"
ONLINE = "online"
OFFLINE = "offline"

# Every word a format uses for its device's presence, lower-cased. Homie's `init` (booting)
# says neither, and is read as no reading at all.
_WORDS: dict[str, str | None] = {
    "online": ONLINE,
    "offline": OFFLINE,
    "true": ONLINE,
    "false": OFFLINE,
    "1": ONLINE,
    "0": OFFLINE,
    "on": ONLINE,
    "off": OFFLINE,
    "connected": ONLINE,
    "ready": ONLINE,  # Homie
    "alert": ONLINE,  # Homie: online, but asking for attention
    "disconnected": OFFLINE,  # Homie: left cleanly
    "lost": OFFLINE,  # Homie: its last will
    "sleeping": OFFLINE,  # Homie: a battery device asleep
    "init": None,  # Homie: starting up
}


def availability(online: bool, event_time: float | None = None) -> Decoded:
    """The availability reading itself."""
    return Decoded(METRIC, 1.0 if online else 0.0, ONLINE if online else OFFLINE, None, event_time)


def read_word(word: str) -> Decoded | None:
    """`online`, `Offline`, `true`, `lost`, ... as a reading; None for a word that says neither
    (Homie's `init`); DecodeError for a word no format uses."""
    key = word.strip().lower()
    if key not in _WORDS:
        raise DecodeError(f"{word[:40]!r} is not an availability state (online/offline)")
    state = _WORDS[key]
    return None if state is None else availability(state == ONLINE)


def decode_availability(payload: bytes, metric: str | None) -> list[Decoded]:
    """Plain words (`online`, `Offline`, `true`), a JSON string (`"online"`), or an object with
    `state` (Zigbee2MQTT) or `online`/`available` fields. The topic's metric is not used: the
    reading is always `availability`."""
    del metric
    head = payload[:1]
    if head in (b"{", b'"'):
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"malformed JSON: {exc}") from None
        if isinstance(data, dict):
            for key in ("state", "online", "available", "status"):
                if key in data:
                    data = data[key]
                    break
            else:
                raise DecodeError("JSON object names no availability (a state field)")
        if isinstance(data, bool):
            return [availability(data)]
        if not isinstance(data, str):
            raise DecodeError(f"availability {data!r} is neither a word nor true/false")
        word = data
    else:
        try:
            word = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("payload is not UTF-8 text") from None
    reading = read_word(word)
    return [] if reading is None else [reading]
