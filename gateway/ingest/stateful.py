"""Decoders that keep state per device or node, and see the whole message and its route.

A plain decoder is a function of the payload; a stateful decoder (Shelly status merging,
Sparkplug alias tables) also needs the topic and remembers what came before. It may return
`TaggedDecoded` readings that name their own device or tags instead of the route's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.ingest.routing import RouteMatch
from gateway.model import Decoded, RawMessage


@dataclass(slots=True)
class TaggedDecoded(Decoded):
    """A reading whose device or tags differ from what the route gave (None: the route's)."""

    device: str | None = None
    tags_json: str | None = None


class MessageDecoder(Protocol):
    """One instance per gateway; it is called from one thread, in message order."""

    def decode_message(self, msg: RawMessage, match: RouteMatch) -> list[Decoded]: ...
