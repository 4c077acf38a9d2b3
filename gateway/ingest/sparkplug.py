"""Sparkplug B: the protobuf payload codec and the stateful decoder (aliases, seq, history).

The payload is small enough to encode and decode by hand from the protobuf wire format, which
spares a protoc step and a generated module. Only the fields Sparkplug B uses for scalar metrics
are understood; DataSets, Templates, metadata and property sets are skipped on decode.

Topic layout: `spBv1.0/<group>/<type>/<node>[/<device>]`, `<type>` one of NBIRTH, NDATA, NDEATH,
NCMD, DBIRTH, DDATA, DDEATH, DCMD.

Decoder semantics (per `<group>/<node>`):
- NBIRTH resets the node's alias table and restarts `seq` tracking; NBIRTH and DBIRTH carry
  every metric with its name, alias and datatype, and those are remembered.
- NDATA/DDATA may name metrics by alias only; the alias is resolved from the births. An alias never
  born is a DecodeError (the message goes to quarantine; the node needs a rebirth).
- `seq` runs 0..255 and wraps; a message whose `seq` is not the previous + 1 counts a gap, and the
  node's cumulative gap count is emitted as the reading `sparkplug.seq_gaps`.
- `is_historical` metrics are stored with the tag `"historical": "true"`; live rules skip them.
- NDEATH/DDEATH yield the reading `availability` = offline (0); births yield it online (1). An
  NDEATH is its devices' death too; one whose bdSeq is not the last NBIRTH's is a late will of
  an earlier session, and ignored.
- DATA metrics without a datatype (the specification says they should not repeat it) are read
  as the datatype their birth declared, so a negative Int16 stays negative.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.errors import DecodeError
from gateway.ingest.availability import METRIC as AVAILABILITY
from gateway.ingest.availability import OFFLINE, ONLINE
from gateway.ingest.routing import RouteMatch
from gateway.ingest.stateful import TaggedDecoded
from gateway.model import Decoded, RawMessage

NAMESPACE = "spBv1.0"

# Sparkplug B datatypes (the subset of scalars this codec carries).
INT8, INT16, INT32, INT64 = 1, 2, 3, 4
UINT8, UINT16, UINT32, UINT64 = 5, 6, 7, 8
FLOAT, DOUBLE, BOOLEAN, STRING, DATETIME, TEXT, UUID = 9, 10, 11, 12, 13, 14, 15
BYTES = 17

# Signed types travel as two's complement in the 32- or 64-bit field (Int8 -5 is 0xFFFFFFFB).
_INT_TYPES = {INT8: 32, INT16: 32, INT32: 32, UINT8: 0, UINT16: 0, UINT32: 0}
_LONG_TYPES = {INT64: 64, UINT64: 0, DATETIME: 0}
_STRING_TYPES = (STRING, TEXT, UUID)

MetricValue = bool | int | float | str | bytes | None


@dataclass(slots=True)
class Metric:
    """One Sparkplug metric; `name` may be None in DATA messages that use aliases."""

    name: str | None
    value: MetricValue
    datatype: int = 0
    alias: int | None = None
    timestamp: int | None = None  # epoch milliseconds
    is_historical: bool = False
    is_null: bool = False


@dataclass(slots=True)
class Payload:
    timestamp: int | None = None  # epoch milliseconds
    seq: int | None = None
    metrics: list[Metric] = field(default_factory=list)
    uuid: str | None = None


# -- wire format -----------------------------------------------------------------------------
def _varint(value: int) -> bytes:
    if value < 0:
        value &= 0xFFFFFFFFFFFFFFFF  # protobuf encodes negative int64 as ten-byte two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field_no: int, wire: int) -> bytes:
    return _varint(field_no << 3 | wire)


def _len_field(field_no: int, data: bytes) -> bytes:
    return _key(field_no, 2) + _varint(len(data)) + data


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise DecodeError("Sparkplug payload: truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise DecodeError("Sparkplug payload: varint longer than 10 bytes")


def _fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) for every field; LEN values are bytes."""
    out: list[tuple[int, int, Any]] = []
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = _read_varint(buf, pos)
        field_no, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            if pos + 8 > end:
                raise DecodeError("Sparkplug payload: truncated 64-bit field")
            value = buf[pos : pos + 8]
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > end:
                raise DecodeError("Sparkplug payload: field runs past the end")
            value = buf[pos : pos + length]
            pos += length
        elif wire == 5:
            if pos + 4 > end:
                raise DecodeError("Sparkplug payload: truncated 32-bit field")
            value = buf[pos : pos + 4]
            pos += 4
        else:
            raise DecodeError(f"Sparkplug payload: unsupported wire type {wire}")
        out.append((field_no, wire, value))
    return out


def _signed(value: int, bits: int) -> int:
    if bits and value >= 1 << (bits - 1):
        return value - (1 << bits)
    return value


def _infer_datatype(value: MetricValue) -> int:
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        return INT64
    if isinstance(value, float):
        return DOUBLE
    if isinstance(value, str):
        return STRING
    return BYTES


def encode_metric(metric: Metric) -> bytes:
    out = bytearray()
    if metric.name is not None:
        out += _len_field(1, metric.name.encode())
    if metric.alias is not None:
        out += _key(2, 0) + _varint(metric.alias)
    if metric.timestamp is not None:
        out += _key(3, 0) + _varint(metric.timestamp)
    if metric.datatype:
        out += _key(4, 0) + _varint(metric.datatype)
    if metric.is_historical:
        out += _key(5, 0) + b"\x01"
    value = metric.value
    if metric.is_null or value is None:
        out += _key(7, 0) + b"\x01"
        return bytes(out)
    dt = metric.datatype or _infer_datatype(value)  # DATA may leave the type to the birth
    if dt in _INT_TYPES:
        out += _key(10, 0) + _varint(int(value) & 0xFFFFFFFF)
    elif dt in _LONG_TYPES:
        out += _key(11, 0) + _varint(int(value) & 0xFFFFFFFFFFFFFFFF)
    elif dt == FLOAT:
        out += _key(12, 5) + struct.pack("<f", float(value))
    elif dt == DOUBLE:
        out += _key(13, 1) + struct.pack("<d", float(value))
    elif dt == BOOLEAN:
        out += _key(14, 0) + (b"\x01" if value else b"\x00")
    elif dt in _STRING_TYPES:
        out += _len_field(15, str(value).encode())
    elif dt == BYTES:
        out += _len_field(16, bytes(value))  # type: ignore[arg-type]
    else:
        raise ValueError(f"datatype {dt} is not supported by this encoder")
    return bytes(out)


def encode_payload(payload: Payload) -> bytes:
    out = bytearray()
    if payload.timestamp is not None:
        out += _key(1, 0) + _varint(payload.timestamp)
    for metric in payload.metrics:
        out += _len_field(2, encode_metric(metric))
    if payload.seq is not None:
        out += _key(3, 0) + _varint(payload.seq)
    if payload.uuid is not None:
        out += _len_field(4, payload.uuid.encode())
    return bytes(out)


def _decode_text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(f"Sparkplug payload: {what} is not UTF-8") from None


def decode_metric(buf: bytes) -> Metric:
    metric = Metric(name=None, value=None)
    raw_value: tuple[int, Any] | None = None
    for field_no, wire, value in _fields(buf):
        if field_no == 1 and wire == 2:
            metric.name = _decode_text(value, "metric name")
        elif field_no == 2 and wire == 0:
            metric.alias = value
        elif field_no == 3 and wire == 0:
            metric.timestamp = value
        elif field_no == 4 and wire == 0:
            metric.datatype = value
        elif field_no == 5 and wire == 0:
            metric.is_historical = bool(value)
        elif field_no == 7 and wire == 0:
            metric.is_null = bool(value)
        elif 10 <= field_no <= 16:
            raw_value = (field_no, value)
    if raw_value is None or metric.is_null:
        metric.is_null = True
        return metric
    field_no, value = raw_value
    dt = metric.datatype
    if field_no == 10:
        metric.value = _signed(value & 0xFFFFFFFF, _INT_TYPES.get(dt, 0))
    elif field_no == 11:
        metric.value = _signed(value, _LONG_TYPES.get(dt, 0))
    elif field_no == 12:
        metric.value = struct.unpack("<f", value)[0]
    elif field_no == 13:
        metric.value = struct.unpack("<d", value)[0]
    elif field_no == 14:
        metric.value = bool(value)
    elif field_no == 15:
        metric.value = _decode_text(value, "string value")
    else:
        metric.value = bytes(value)
    return metric


def decode_payload(buf: bytes) -> Payload:
    payload = Payload()
    for field_no, wire, value in _fields(buf):
        if field_no == 1 and wire == 0:
            payload.timestamp = value
        elif field_no == 2 and wire == 2:
            payload.metrics.append(decode_metric(value))
        elif field_no == 3 and wire == 0:
            payload.seq = value
        elif field_no == 4 and wire == 2:
            payload.uuid = _decode_text(value, "uuid")
    return payload


# -- decoder ---------------------------------------------------------------------------------
@dataclass(slots=True)
class _NodeState:
    aliases: dict[int, tuple[str, int]] = field(default_factory=dict)
    types: dict[str, int] = field(default_factory=dict)  # each born metric's datatype, by name
    last_seq: int | None = None
    seq_gaps: int = 0
    bd_seq: int | None = None
    devices: set[str] = field(default_factory=set)  # born (DBIRTH) and not dead (DDEATH)


def _resigned(value: int, datatype: int) -> int:
    """An integer decoded without its datatype (DATA messages should not repeat it), read
    again as the datatype its birth declared: -3 as an Int16, not 4294967293."""
    if datatype in _INT_TYPES:
        return _signed(value & 0xFFFFFFFF, _INT_TYPES[datatype])
    if datatype in _LONG_TYPES:
        return _signed(value, _LONG_TYPES[datatype])
    return value


def _bd_seq(payload: Payload) -> int | None:
    for metric in payload.metrics:
        if metric.name == "bdSeq" and isinstance(metric.value, int):
            return metric.value
    return None


_MAX_NODES = 100_000
_NODE_TYPES = ("NBIRTH", "NDATA", "NDEATH", "NCMD")
_DEVICE_TYPES = ("DBIRTH", "DDATA", "DDEATH", "DCMD")


def _tags_with(base: str | None, extra: dict[str, str]) -> str:
    tags: dict[str, Any] = orjson.loads(base) if base else {}
    tags.update(extra)
    return orjson.dumps(tags, option=orjson.OPT_SORT_KEYS).decode()


class SparkplugDecoder:
    """Keeps one alias table and `seq` tracker per edge node; see the module docstring."""

    name = "sparkplug"

    def __init__(self) -> None:
        self._nodes: dict[tuple[str, str], _NodeState] = {}
        self._tag_cache: dict[tuple[str | None, str, str, bool], str] = {}

    def seq_gaps(self, group: str, node: str) -> int:
        state = self._nodes.get((group, node))
        return state.seq_gaps if state else 0

    def _tags(self, base: str | None, group: str, node: str, historical: bool) -> str:
        key = (base, group, node, historical)
        tags = self._tag_cache.get(key)
        if tags is None:
            extra = {"group": group, "node": node}
            if historical:
                extra["historical"] = "true"
            tags = self._tag_cache[key] = _tags_with(base, extra)
        return tags

    def decode_message(self, msg: RawMessage, match: RouteMatch) -> list[Decoded]:
        parts = msg.topic.split("/")
        if len(parts) not in (4, 5) or parts[0] != NAMESPACE:
            raise DecodeError("not a Sparkplug B topic: spBv1.0/<group>/<type>/<node>[/<device>]")
        group, kind, node = parts[1], parts[2], parts[3]
        if (len(parts) == 4) != (kind in _NODE_TYPES) or kind not in _NODE_TYPES + _DEVICE_TYPES:
            raise DecodeError(f"Sparkplug message type {kind!r} does not fit this topic")
        device = parts[4] if len(parts) == 5 else node
        if kind in ("NCMD", "DCMD"):
            return []  # commands to devices are not readings
        payload = decode_payload(msg.payload)
        state = self._nodes.get((group, node))
        if kind == "NBIRTH":
            if state is None and len(self._nodes) >= _MAX_NODES:
                self._nodes.clear()  # a flood of invented node ids must not grow memory
                self._tag_cache.clear()
            state = self._nodes[(group, node)] = _NodeState(seq_gaps=state.seq_gaps if state else 0)
        elif state is None:
            if kind == "NDEATH":
                return []  # the death of a node we never saw born says nothing
            raise DecodeError(
                f"no NBIRTH seen for node {group}/{node}: aliases unknown, a rebirth is needed"
            )
        out: list[Decoded] = []
        base_time = payload.timestamp / 1000 if payload.timestamp is not None else None

        def tagged(
            reading_metric: str,
            value: float | None,
            text: str | None,
            historical: bool,
            ts: float | None,
        ) -> TaggedDecoded:
            return TaggedDecoded(
                reading_metric,
                value,
                text,
                None,
                ts,
                device=device,
                tags_json=self._tags(match.tags_json, group, node, historical),
            )

        if kind == "NDEATH":
            # NDEATH carries only bdSeq and no seq; it is the MQTT will of the node's session.
            # One whose bdSeq is not the last NBIRTH's is the will of an earlier session that
            # the broker delivered late: the node is online (Sparkplug 3.0, bdSeq).
            dead = _bd_seq(payload)
            if dead is not None and state.bd_seq is not None and dead != state.bd_seq:
                return []
            # The node's death is its devices' too.
            out = [tagged(AVAILABILITY, 0.0, OFFLINE, False, base_time)]
            for born in sorted(state.devices):
                gone = tagged(AVAILABILITY, 0.0, OFFLINE, False, base_time)
                gone.device = born
                out.append(gone)
            state.devices.clear()
            return out
        gap = False
        if payload.seq is not None:
            expected = None if state.last_seq is None else (state.last_seq + 1) % 256
            gap = kind != "NBIRTH" and expected is not None and payload.seq != expected
            state.last_seq = payload.seq
        if gap:
            state.seq_gaps += 1
            gaps = tagged("sparkplug.seq_gaps", float(state.seq_gaps), None, False, base_time)
            gaps.device = node  # `seq` counts the node's messages, so the gap is the node's
            out.append(gaps)
        birth = kind in ("NBIRTH", "DBIRTH")
        if kind == "DBIRTH":
            state.devices.add(device)
        elif kind == "DDEATH":
            state.devices.discard(device)
        if birth or kind == "DDEATH":
            online = birth
            out.append(
                tagged(AVAILABILITY, float(online), ONLINE if online else OFFLINE, False, base_time)
            )
        for metric in payload.metrics:
            name = metric.name
            datatype = metric.datatype
            if birth:
                if name is None:
                    raise DecodeError(f"{kind} metric without a name (alias {metric.alias})")
                if metric.alias is not None:
                    state.aliases[metric.alias] = (name, datatype)
                state.types[name] = datatype
            elif name is None:
                if metric.alias is None:
                    raise DecodeError(f"{kind} metric with neither name nor alias")
                known = state.aliases.get(metric.alias)
                if known is None:
                    raise DecodeError(
                        f"alias {metric.alias} was not declared in a birth of {group}/{node}"
                    )
                name, born_type = known
                if not datatype:
                    datatype = born_type
                    if isinstance(metric.value, int) and not isinstance(metric.value, bool):
                        metric.value = _resigned(metric.value, datatype)
            elif not datatype and name in state.types:
                datatype = state.types[name]
                if isinstance(metric.value, int) and not isinstance(metric.value, bool):
                    metric.value = _resigned(metric.value, datatype)
            if name == "bdSeq":
                state.bd_seq = metric.value if isinstance(metric.value, int) else None
                continue
            if name.startswith("Node Control/"):
                continue  # rebirth/reboot handles, not measurements
            ts = metric.timestamp / 1000 if metric.timestamp is not None else base_time
            value = metric.value
            if metric.is_null or value is None:
                out.append(tagged(name, None, None, metric.is_historical, ts))
            elif isinstance(value, bool):
                out.append(
                    tagged(
                        name, float(value), "true" if value else "false", metric.is_historical, ts
                    )
                )
            elif isinstance(value, int | float):
                out.append(tagged(name, float(value), None, metric.is_historical, ts))
            elif isinstance(value, str):
                out.append(tagged(name, None, value, metric.is_historical, ts))
            else:
                out.append(tagged(name, None, value.hex(), metric.is_historical, ts))
        return out
