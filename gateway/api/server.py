"""A small HTTP server on a thread: /healthz, /readyz, /api/status and /api/sql.

SQL answers come as an Arrow IPC stream (what `edge-gateway sql` reads) or as JSON when the
client asks for `application/json`.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from gateway.buffer.sql import run_query
from gateway.config import ApiConfig
from gateway.errors import BufferStoreError, ReadOnlySqlError

if TYPE_CHECKING:
    from gateway.app import Gateway

logger = logging.getLogger(__name__)

ARROW_STREAM = "application/vnd.apache.arrow.stream"
MAX_BODY = 1024 * 1024


def arrow_to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def arrow_to_json_rows(table: pa.Table) -> dict[str, Any]:
    rows = [
        [v.hex() if isinstance(v, bytes) else v for v in row.values()] for row in table.to_pylist()
    ]
    return {"columns": table.column_names, "rows": rows}


class ApiServer:
    def __init__(self, config: ApiConfig, gateway: Gateway) -> None:
        self.config = config
        self.gateway = gateway
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        handler = _make_handler(self)
        self._server = ThreadingHTTPServer((self.config.host, self.config.port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            name="api",
            kwargs={"poll_interval": 0.2},
            daemon=True,
        )
        self._thread.start()
        host, port = self._server.server_address[:2]
        logger.info("API listening on http://%s:%s", host, port)
        return str(host), int(port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- answers --------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        gw = self.gateway
        now = time.time()
        stats = gw.stats
        ingest = gw.ingest
        store = gw.store
        counters = store.counters() if store is not None else {}
        return {
            "gateway_id": gw.config.gateway_id,
            "uptime_s": round(now - stats.started_at, 1),
            "broker": {
                "address": f"{gw.config.mqtt.host}:{gw.config.mqtt.port}",
                "connected": bool(ingest and ingest.connected.is_set()),
                "connects": ingest.connects if ingest else 0,
                "last_error": ingest.last_error if ingest else None,
                "pending": ingest.pending() if ingest else 0,
            },
            "ingest": {
                "readings_per_s": round(stats.readings_per_second(now), 1),
                "messages": stats.messages,
                "readings": stats.readings,
                "quarantined": stats.quarantined,
                "duplicates_dropped": stats.duplicates,
                "batches": stats.batches,
                "commit_failures": stats.commit_failures,
            },
            "buffer": {
                "path": str(gw.config.buffer.path),
                "file_bytes": _file_size(gw),
                "counters": counters,
            },
        }

    def sql(self, sql: str, limit: int | None) -> pa.Table:
        store = self.gateway.store
        if store is None:
            raise BufferStoreError("buffer is not open yet")
        cap = self.config.sql_row_limit
        return run_query(store.reader(), sql, min(limit or cap, cap))


def _file_size(gw: Gateway) -> int:
    path = gw.config.buffer.path
    try:
        size = path.stat().st_size
        wal = path.with_name(path.name + ".wal")
        return size + (wal.stat().st_size if wal.exists() else 0)
    except OSError:
        return 0


def _make_handler(api: ApiServer) -> type[BaseHTTPRequestHandler]:
    token = api.config.token.get_secret_value() if api.config.token else None

    class Handler(BaseHTTPRequestHandler):
        server_version = "edge-gateway"

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("api: " + format, *args)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, payload: Any) -> None:
            self._send(status, json.dumps(payload, default=str).encode(), "application/json")

        def _authorised(self) -> bool:
            if token is None:
                return True
            given = self.headers.get("Authorization", "")
            if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return True
            self._json(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"})
            return False

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._json(HTTPStatus.OK, {"status": "ok"})
                return
            if not self._authorised():
                return
            if path == "/readyz":
                ingest = api.gateway.ingest
                ready = bool(ingest and ingest.connected.is_set() and api.gateway.store)
                self._json(
                    HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE,
                    {
                        "ready": ready,
                        "broker_connected": bool(ingest and ingest.connected.is_set()),
                    },
                )
            elif path == "/api/status":
                self._json(HTTPStatus.OK, api.status())
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {path}"})

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            if not self._authorised():
                return
            if path != "/api/sql":
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {path}"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "request too large"})
                return
            try:
                request = json.loads(self.rfile.read(length) or b"{}")
                sql = str(request["sql"])
                limit = request.get("limit")
            except (ValueError, KeyError, TypeError):
                self._json(HTTPStatus.BAD_REQUEST, {"error": 'send JSON: {"sql": "SELECT ..."}'})
                return
            try:
                table = api.sql(sql, int(limit) if limit else None)
            except ReadOnlySqlError as exc:
                self._json(HTTPStatus.FORBIDDEN, {"error": str(exc)})
                return
            except BufferStoreError as exc:
                self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
                return
            if ARROW_STREAM in (self.headers.get("Accept") or ""):
                self._send(HTTPStatus.OK, arrow_to_ipc(table), ARROW_STREAM)
            else:
                self._json(HTTPStatus.OK, arrow_to_json_rows(table))

    return Handler
