"""ESPHome's MQTT state topics: `<prefix>/<component>/<object_id>/state`, one value each.

The prefix is the node name unless `mqtt.topic_prefix` says otherwise. Every component publishes
its state on its own topic: a sensor its number (`21.5`; `nan` or `None` when it has no state),
a binary sensor, switch, fan or light (without JSON) `ON`/`OFF`, a text sensor its text, a
cover `open`/`closed`, a lock `LOCKED`. Some have more than one state topic:
`<prefix>/climate/<id>/current_temperature/state`, `<prefix>/cover/<id>/position/state`. A
light with the JSON schema (the default) and an event publish a JSON object
(`{"state":"ON","brightness":255,"color":{"r":255,...}}`). The route names the node as device and
the object id (and the sub-state: `living_room.current_temperature`) as metric; the values read
as in gateway/ingest/values.py. ESPHome sends no unit on state topics (only in Home Assistant
discovery), so readings carry none unless the route sets one.
"""

from __future__ import annotations

from gateway.errors import DecodeError
from gateway.ingest.values import plain_readings
from gateway.model import Decoded


def decode_esphome(payload: bytes, metric: str | None) -> list[Decoded]:
    """A component's state; see the module docstring."""
    if metric is None:
        raise DecodeError("ESPHome state needs a route that names the metric (the object id)")
    return plain_readings(payload, metric)
