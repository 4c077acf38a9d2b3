"""Turns raw MQTT messages into one IngestBatch: readings and quarantine as Arrow tables."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa

from gateway.config import DecoderName
from gateway.errors import DecodeError
from gateway.ingest.availability import decode_availability
from gateway.ingest.content import content_identity
from gateway.ingest.decoders import (
    Decoder,
    decode_auto,
    decode_ignore,
    decode_json,
    decode_number,
    decode_text,
    impossible_time,
)
from gateway.ingest.esphome import decode_esphome
from gateway.ingest.redelivery import RedeliveryFilter
from gateway.ingest.routing import RouteMatch, TopicRouter
from gateway.ingest.shelly_gen1 import decode_shelly_gen1
from gateway.ingest.skew import with_skew_tag
from gateway.ingest.stateful import MessageDecoder, TaggedDecoded
from gateway.ingest.statestream import decode_statestream
from gateway.ingest.tasmota import decode_tasmota, decode_tasmota_stat
from gateway.model import (
    DECODED_QUARANTINE_SCHEMA,
    HISTORICAL_TAG,
    Decoded,
    DeviceSeen,
    IngestBatch,
    RawMessage,
    ReadingColumns,
    timestamps,
)

BeforeTables = Callable[[ReadingColumns, list[int]], None]

QUARANTINE_KEEP_BYTES = 4096  # how much of an oversized payload the quarantine keeps

# Readings the device registry also keeps as a device's facts (gateway/buffer/devices.py).
REGISTRY_FACTS = frozenset({"availability", "model", "vendor"})


# The plain decoders, functions of the payload; "shelly", "sparkplug", "homie" and
# "zigbee2mqtt" keep state per device (`stateful_decoders`, gateway/ingest/stateful.py).
DECODERS: dict[DecoderName, Decoder] = {
    "auto": decode_auto,
    "number": decode_number,
    "text": decode_text,
    "json": decode_json,
    "tasmota": decode_tasmota,
    "tasmota_stat": decode_tasmota_stat,
    "statestream": decode_statestream,
    "shelly_gen1": decode_shelly_gen1,
    "esphome": decode_esphome,
    "availability": decode_availability,
    "ignore": decode_ignore,
}


def stateful_decoders() -> dict[str, Callable[[], MessageDecoder]]:
    """Factories by decoder name; imported on first use so a gateway without them loads nothing."""
    from gateway.ingest.homie import HomieDecoder
    from gateway.ingest.shelly import ShellyDecoder
    from gateway.ingest.sparkplug import SparkplugDecoder
    from gateway.ingest.zigbee2mqtt import Zigbee2Mqtt

    return {
        "shelly": ShellyDecoder,
        "sparkplug": SparkplugDecoder,
        "homie": HomieDecoder,
        "zigbee2mqtt": Zigbee2Mqtt,
        "zigbee2mqtt_devices": Zigbee2Mqtt,  # the same instance: the list teaches it units
    }


def _device_time(
    when: float, d: Decoded, match: RouteMatch, received: float, tags_json: str | None
) -> tuple[int, str | None]:
    """A reading's device time `when` in microseconds, in the route's zone when it named none,
    and the tags: with `clock_skew` when it is further from the arrival than the route trusts."""
    times = match.times
    if times is None:
        return int(when * 1e6), tags_json
    if not d.zoned:
        when = times.local(when)
    if times.skewed(when, received) and not (tags_json and HISTORICAL_TAG in tags_json):
        tags_json = with_skew_tag(tags_json, times.verdict)
    return int(when * 1e6), tags_json


def _registry_fact(owner: DeviceSeen, d: Decoded, received: int) -> None:
    if d.text is None:
        return
    if d.metric == "availability":
        owner.said_availability(d.text, received)
    elif d.metric == "model":
        owner.model = d.text
    else:
        owner.vendor = d.text


class BatchDecoder:
    """Routes and decodes a batch; bad messages become quarantine rows, never exceptions."""

    def __init__(
        self, router: TopicRouter, redelivery: RedeliveryFilter, max_payload_bytes: int
    ) -> None:
        self._router = router
        self._redelivery = redelivery
        self._max_payload = max_payload_bytes
        # Routes with a dedup window recognise copies by content (gateway/ingest/content.py).
        # The buffer knows the identities it committed and drops their copies as it appends;
        # the ones decoded but not committed yet are known here, until `committed`.
        self._dedups = router.dedups
        self._uncommitted: set[int] = set()
        # One instance of each stateful decoder (Shelly, Sparkplug, Zigbee2MQTT) per gateway,
        # made on first use; decoder names served by one class share its instance.
        self._stateful: dict[str, MessageDecoder] = {}
        self._instances: dict[Callable[[], MessageDecoder], MessageDecoder] = {}

    def _stateful_decoder(self, name: str) -> MessageDecoder:
        decoder = self._stateful.get(name)
        if decoder is None:
            factory = stateful_decoders()[name]
            decoder = self._instances.get(factory)
            if decoder is None:
                decoder = self._instances[factory] = factory()
            self._stateful[name] = decoder
        return decoder

    def decode(
        self, messages: list[RawMessage], before_tables: BeforeTables | None = None
    ) -> IngestBatch:
        """Route and decode; `before_tables` sees the readings as lists (and which rows came
        from retained messages) before the Arrow tables are built: the rules' commands then
        leave without waiting for them."""
        event_time: list[int] = []  # microseconds
        ingest_time: list[int] = []
        device: list[str] = []
        metric: list[str] = []
        value: list[float | None] = []
        text: list[str | None] = []
        unit: list[str | None] = []
        topic: list[str] = []
        tags: list[str | None] = []
        quarantined: list[tuple[RawMessage, str]] = []
        retained: list[int] = []
        route = self._router.route
        redelivery = self._redelivery.is_redelivery
        fresh = [m for m in messages if not m.extra_copy and not redelivery(m)]
        duplicates = len(messages) - len(fresh)
        identities: list[tuple[int, float]] = []
        message_identities: list[int | None] = []
        reading_identities: list[int | None] = []
        quarantine_identities: list[int | None] = []
        if self._dedups:
            fresh, message_identities, identities = self._drop_copies(fresh)
            duplicates = len(messages) - len(fresh)
        identity: int | None = None  # of the message before: its rows are the ones not filled
        empty = 0
        devices: dict[str, DeviceSeen] = {}

        def seen(name: str, at: int) -> DeviceSeen:
            entry = devices.get(name)
            if entry is None:
                entry = devices[name] = DeviceSeen(at, at)
            elif at > entry.last_seen:
                entry.last_seen = at
            return entry

        def fill(identity: int | None) -> None:
            reading_identities.extend([identity] * (len(device) - len(reading_identities)))
            missing = len(quarantined) - len(quarantine_identities)
            quarantine_identities.extend([identity] * missing)

        for index, msg in enumerate(fresh):
            if message_identities:
                fill(identity)
                identity = message_identities[index]
            if len(msg.payload) > self._max_payload:
                quarantined.append(
                    (
                        msg,
                        f"payload of {len(msg.payload)} bytes exceeds max_payload_bytes "
                        f"{self._max_payload} (first {QUARANTINE_KEEP_BYTES} bytes kept)",
                    )
                )
                continue
            if not msg.payload:  # nothing to read, and nothing wrong with it either
                empty += 1
                continue
            match = route(msg.topic)
            if match is None:
                quarantined.append((msg, "no route matches this topic"))
                continue
            received = int(msg.received_at * 1e6)
            source = seen(match.device, received)
            source.messages += 1
            source.routes.add(match.pattern)
            plain = DECODERS.get(match.decoder)
            try:
                if plain is None:
                    decoded = self._stateful_decoder(match.decoder).decode_message(msg, match)
                else:
                    decoded = plain(msg.payload, match.metric)
            except DecodeError as exc:
                quarantined.append((msg, f"{match.decoder} decoder: {exc}"))
                source.quarantined += 1
                continue
            except (UnicodeDecodeError, RecursionError, ValueError) as exc:
                quarantined.append((msg, f"{match.decoder} decoder: {type(exc).__name__}: {exc}"))
                source.quarantined += 1
                continue
            impossible = impossible_time(decoded)
            if impossible is not None:
                quarantined.append((msg, f"{match.decoder} decoder: {impossible}"))
                source.quarantined += 1
                continue
            if msg.retain:
                retained.extend(range(len(device), len(device) + len(decoded)))
            if plain is None:  # stateful readings may name their own device and tags
                for d in decoded:
                    own = d if isinstance(d, TaggedDecoded) else None
                    tagged = own.tags_json or match.tags_json if own else match.tags_json
                    when = d.event_time
                    if when is None:
                        event_time.append(received)
                    else:
                        micros, tagged = _device_time(when, d, match, msg.received_at, tagged)
                        event_time.append(micros)
                    ingest_time.append(received)
                    name = own.device or match.device if own else match.device
                    device.append(name)
                    owner = source if name == match.device else seen(name, received)
                    owner.readings += 1
                    if d.metric in REGISTRY_FACTS:
                        _registry_fact(owner, d, received)
                    metric.append(d.metric)
                    value.append(d.value)
                    text.append(d.text)
                    unit.append(d.unit if d.unit is not None else match.unit)
                    topic.append(msg.topic)
                    tags.append(tagged)
                continue
            source.readings += len(decoded)
            for d in decoded:
                if d.metric in REGISTRY_FACTS:
                    _registry_fact(source, d, received)
                tagged = match.tags_json
                when = d.event_time
                if when is None:
                    event_time.append(received)
                else:
                    micros, tagged = _device_time(when, d, match, msg.received_at, tagged)
                    event_time.append(micros)
                ingest_time.append(received)
                device.append(match.device)
                metric.append(d.metric)
                value.append(d.value)
                text.append(d.text)
                unit.append(d.unit if d.unit is not None else match.unit)
                topic.append(msg.topic)
                tags.append(tagged)
        if message_identities:
            fill(identity)
        columns = ReadingColumns(
            event_time, ingest_time, device, metric, value, text, unit, topic, tags
        )
        if before_tables is not None:
            before_tables(columns, retained)
        readings = columns.table()
        return IngestBatch(
            readings=readings,
            quarantine=quarantine_table(quarantined, self._max_payload),
            messages=fresh,
            duplicates=duplicates,
            empty=empty,
            retained=retained,
            identities=identities,
            reading_identities=reading_identities,
            quarantine_identities=quarantine_identities,
            devices=devices,
        )

    def committed(self, batch: IngestBatch) -> None:
        """The batch is in the buffer: its identities are the buffer's to know from now on."""
        if batch.identities:
            self._uncommitted.difference_update(i for i, _ in batch.identities)

    def _drop_copies(
        self, messages: list[RawMessage]
    ) -> tuple[list[RawMessage], list[int | None], list[tuple[int, float]]]:
        """The messages that are not copies of one decoded but not committed yet, each one's
        identity (None off dedup routes), and the identities to commit with them."""
        route = self._router.route
        uncommitted = self._uncommitted
        kept: list[RawMessage] = []
        kept_identities: list[int | None] = []
        identities: list[tuple[int, float]] = []
        for msg in messages:
            match = route(msg.topic)
            if match is None or not match.dedup_window:
                kept.append(msg)
                kept_identities.append(None)
                continue
            identity = content_identity(msg.topic, msg.payload)
            if identity in uncommitted:
                continue  # a copy of one still on its way to the buffer
            uncommitted.add(identity)
            kept.append(msg)
            kept_identities.append(identity)
            identities.append((identity, msg.received_at + match.dedup_window))
        return kept, kept_identities, identities


_NO_QUARANTINE = DECODED_QUARANTINE_SCHEMA.empty_table()


def quarantine_table(rows: list[tuple[RawMessage, str]], max_payload_bytes: int) -> pa.Table:
    """Quarantine rows keep the whole payload, or its head when it was oversized."""
    if not rows:
        return _NO_QUARANTINE

    def kept(payload: bytes) -> bytes:
        return payload if len(payload) <= max_payload_bytes else payload[:QUARANTINE_KEEP_BYTES]

    return pa.Table.from_arrays(
        [
            timestamps([int(m.received_at * 1e6) for m, _ in rows]),
            pa.array([m.topic for m, _ in rows], pa.string()),
            pa.array([kept(m.payload) for m, _ in rows], pa.binary()),
            pa.array([len(m.payload) for m, _ in rows], pa.int64()),
            pa.array([reason for _, reason in rows], pa.string()),
        ],
        schema=DECODED_QUARANTINE_SCHEMA,
    )
