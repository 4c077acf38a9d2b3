"""Avro values for Kafka: the record schemas, and framing with a Confluent-compatible registry
(magic byte 0, 4-byte schema id, Avro body) or, without one, the schema in a message header."""

from __future__ import annotations

import base64
import io
import json
import struct
import urllib.error
import urllib.request
from typing import Any

from gateway.errors import SinkError

try:
    import fastavro
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("Avro values need fastavro: pip install 'edge-gateway[kafka]'") from exc

SCHEMA_HEADER = "avro.schema"  # header holding the writer schema when no registry is used

_TS = {"type": "long", "logicalType": "timestamp-micros"}
_OPT_STR: list[Any] = ["null", "string"]
_OPT_DOUBLE: list[Any] = ["null", "double"]

SCHEMAS: dict[str, dict[str, Any]] = {
    "readings": {
        "type": "record",
        "name": "Reading",
        "namespace": "io.edge_gateway",
        "doc": "One sensor reading as buffered by the edge gateway.",
        "fields": [
            {"name": "event_id", "type": "string"},
            {"name": "event_time", "type": _TS},
            {"name": "ingest_time", "type": _TS},
            {"name": "device", "type": "string"},
            {"name": "metric", "type": "string"},
            {"name": "value", "type": _OPT_DOUBLE, "default": None},
            {"name": "text", "type": _OPT_STR, "default": None},
            {"name": "unit", "type": _OPT_STR, "default": None},
            {"name": "topic", "type": "string"},
            {"name": "tags", "type": {"type": "map", "values": "string"}, "default": {}},
            {"name": "gateway_id", "type": "string"},
        ],
    },
    "alerts": {
        "type": "record",
        "name": "Alert",
        "namespace": "io.edge_gateway",
        "doc": "An alert raised by a rule on the edge gateway.",
        "fields": [
            {"name": "event_id", "type": "string"},
            {"name": "alert_time", "type": _TS},
            {"name": "rule_id", "type": "string"},
            {"name": "device", "type": "string"},
            {"name": "metric", "type": _OPT_STR, "default": None},
            {"name": "severity", "type": "string"},
            {"name": "state", "type": "string"},
            {"name": "message", "type": _OPT_STR, "default": None},
            {"name": "value", "type": _OPT_DOUBLE, "default": None},
            {"name": "reading_event_id", "type": _OPT_STR, "default": None},
            {"name": "gateway_id", "type": "string"},
        ],
    },
}


class AvroEncoder:
    """Encodes records of one stream; `registry_url` switches to the Confluent wire format."""

    def __init__(
        self,
        sink: str,
        stream: str,
        registry_url: str | None = None,
        registry_auth: tuple[str, str] | None = None,
    ) -> None:
        self.sink = sink
        self.schema_json = json.dumps(SCHEMAS[stream], separators=(",", ":"))
        self.schema = fastavro.parse_schema(SCHEMAS[stream])
        self.registry_url = registry_url.rstrip("/") if registry_url else None
        self.registry_auth = registry_auth
        self._ids: dict[str, int] = {}  # subject -> schema id

    def header(self) -> tuple[str, bytes] | None:
        return None if self.registry_url else (SCHEMA_HEADER, self.schema_json.encode())

    def encode_one(self, record: dict[str, Any], topic: str) -> bytes:
        """One value; ValueError, TypeError or OverflowError for a record the schema cannot
        take (SinkError when the registry fails)."""
        buffer = io.BytesIO()
        if self.registry_url:
            buffer.write(b"\x00" + struct.pack(">I", self.schema_id(f"{topic}-value")))
        fastavro.schemaless_writer(buffer, self.schema, record)
        return buffer.getvalue()

    def schema_id(self, subject: str) -> int:
        """Register (or look up) the schema under `subject`; the registry returns its id."""
        known = self._ids.get(subject)
        if known is not None:
            return known
        assert self.registry_url is not None
        body = json.dumps({"schema": self.schema_json}).encode()
        request = urllib.request.Request(  # noqa: S310 (configured registry URL)
            f"{self.registry_url}/subjects/{subject}/versions",
            data=body,
            method="POST",
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        )
        if self.registry_auth:
            token = base64.b64encode(":".join(self.registry_auth).encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                schema_id = int(json.loads(response.read())["id"])
        except (OSError, ValueError, KeyError) as exc:
            raise SinkError(
                self.sink, f"schema registry {self.registry_url}: cannot register {subject}: {exc}"
            ) from exc
        self._ids[subject] = schema_id
        return schema_id


def decode(value: bytes, schema: dict[str, Any]) -> dict[str, Any]:
    """Decode one value written with `schema` (header mode), for tests and consumers."""
    result = fastavro.schemaless_reader(io.BytesIO(value), schema, None)
    assert isinstance(result, dict)
    return result
