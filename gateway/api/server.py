"""The local HTTP API on a thread: health, Prometheus metrics, JSON views, SQL, live events and
the dashboard.

    GET  /healthz                 liveness: 503 naming a stalled part (never needs the token)
    GET  /readyz                  200 when the broker is connected and the buffer is open
    GET  /metrics                 Prometheus text format
    GET  /api/status | devices | rules | alerts | sinks | quarantine    JSON
    POST /api/sql                 {"sql": "SELECT ..."}: Arrow IPC stream or JSON rows
    GET  /api/events              server-sent events: a dashboard snapshot every second
    GET  /  and /static/...       the dashboard (assets ship in the package; no CDN)

When `api.token` is set every endpoint but /healthz and the dashboard's static files wants
`Authorization: Bearer <token>`; binding beyond loopback without a token is refused.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any

import duckdb
import orjson
import pyarrow as pa

from gateway.api import views
from gateway.api.telemetry import Telemetry
from gateway.config import ApiConfig
from gateway.errors import BufferStoreError, ConfigError, ReadOnlySqlError

if TYPE_CHECKING:
    from gateway.api.parts import GatewayParts

logger = logging.getLogger(__name__)

ARROW_STREAM = "application/vnd.apache.arrow.stream"
MAX_BODY = 1024 * 1024
MIN_FREE_BYTES = 16 * 1024 * 1024  # below this /readyz reports the buffer as not writable
EVENT_INTERVAL = 1.0  # seconds between dashboard snapshots on /api/events
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}


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


def to_json(payload: Any) -> bytes:
    """JSON that browsers parse: NaN and infinities become null, dates ISO strings."""
    try:
        return orjson.dumps(payload, default=str, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # e.g. a 128-bit integer from SUM(): the slow path handles it
        return json.dumps(_finite(payload), default=str).encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The dashboard's files by URL path, read once from the package."""
    files: dict[str, tuple[bytes, str]] = {}
    root = resources.files("gateway.api") / "static"
    for entry in root.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in STATIC_TYPES:
            files[f"/static/{entry.name}"] = (entry.read_bytes(), STATIC_TYPES[suffix])
    if "/static/index.html" in files:
        files["/"] = files["/static/index.html"]
    return files


class SnapshotCache:
    """Builds the dashboard snapshot at most once per interval, however many viewers."""

    def __init__(self, build: Callable[[], dict[str, Any]], interval: float) -> None:
        self._build = build
        self._interval = interval
        self._lock = threading.Lock()
        self._at = 0.0
        self._data = b""

    def get(self) -> bytes:
        with self._lock:
            now = time.monotonic()
            if not self._data or now - self._at >= self._interval * 0.9:
                self._data = to_json(self._build())
                self._at = now
            return self._data


class ApiServer:
    def __init__(self, config: ApiConfig, parts: GatewayParts) -> None:
        self.config = config
        self.parts = parts
        self.telemetry: Telemetry = parts.telemetry
        self.seeded = False  # devices' latest values read from the buffer once after start
        self.closing = threading.Event()
        self.snapshots = SnapshotCache(lambda: views.snapshot(self), EVENT_INTERVAL)
        self.static = _static_files()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        if not is_loopback(self.config.host) and self.config.token is None:
            raise ConfigError(
                "api", [f"api.host: binding to {self.config.host} needs a token (api.token)"]
            )
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
        self.closing.set()  # ends open event streams
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- helpers for the views ----------------------------------------------------------------
    def now(self) -> float:
        return time.time()

    @contextlib.contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        store = self.parts.store
        if store is None:
            raise BufferStoreError("buffer is not open yet")
        with store.reading() as con:
            yield con

    def buffer_bytes(self) -> int:
        path = self.parts.config.buffer.path
        try:
            size = path.stat().st_size
            wal = path.with_name(path.name + ".wal")
            return size + (wal.stat().st_size if wal.exists() else 0)
        except OSError:
            return 0

    def sinks(self) -> list[dict[str, Any]]:
        shipping = self.parts.shipping
        if shipping is None or self.parts.store is None:
            return []
        entries: list[dict[str, Any]] = shipping.status()
        return entries

    # -- answers --------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return views.status(self)

    def sql(self, sql: str, limit: int | None) -> pa.Table:
        store = self.parts.store
        if store is None:
            raise BufferStoreError("buffer is not open yet")
        cap = self.config.sql_row_limit
        return store.query(sql, min(limit or cap, cap))


def _make_handler(api: ApiServer) -> type[BaseHTTPRequestHandler]:
    from gateway.api.metrics import CONTENT_TYPE, render_metrics

    token = api.config.token.get_secret_value() if api.config.token else None
    json_views: dict[str, Callable[[], Any]] = {
        "/api/status": api.status,
        "/api/devices": lambda: {"devices": views.devices(api), "registry": views.registry(api)},
        "/api/rules": lambda: views.rules(api),
        "/api/alerts": lambda: views.alerts(api),
        "/api/sinks": lambda: {"sinks": api.sinks()},
        "/api/quarantine": lambda: views.quarantine(api),
    }

    class Handler(BaseHTTPRequestHandler):
        server_version = "edge-gateway"

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("api: " + format, *args)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, payload: Any) -> None:
            self._send(status, to_json(payload), "application/json")

        def _authorised(self) -> bool:
            if token is None:
                # Without a token the API is for this box only. A web page elsewhere could
                # still reach it through the browser by DNS rebinding: such requests name
                # the attacker's host, so only loopback names are answered.
                host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
                if is_loopback(host):
                    return True
                self._json(
                    HTTPStatus.FORBIDDEN,
                    {"error": "without api.token the API answers only 127.0.0.1 and localhost"},
                )
                return False
            given = self.headers.get("Authorization", "")
            if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return True
            self._json(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"})
            return False

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._health()
                return
            static = api.static.get(path)
            if static is not None:
                self._send(HTTPStatus.OK, static[0], static[1])
                return
            if not self._authorised():
                return
            try:
                if path == "/readyz":
                    self._ready()
                elif path == "/metrics":
                    self._send(HTTPStatus.OK, render_metrics(api), CONTENT_TYPE)
                elif path == "/api/events":
                    self._events()
                elif path in json_views:
                    self._json(HTTPStatus.OK, json_views[path]())
                else:
                    self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {path}"})
            except (BufferStoreError, duckdb.Error) as exc:  # buffer not open yet, or closing
                self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})

        def _health(self) -> None:
            # Answered on this thread from the parts' beats: it needs neither the writer nor
            # the event loop, so it still answers when one of them is stuck.
            report = api.parts.liveness.report()
            healthy = report["healthy"]
            self._json(HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE, report)

        def _ready(self) -> None:
            ingest = api.parts.ingest
            connected = bool(ingest and ingest.connected.is_set())
            writable = _buffer_writable(api)
            ready = connected and writable
            self._json(
                HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE,
                {"ready": ready, "broker_connected": connected, "buffer_writable": writable},
            )

        def _events(self) -> None:
            """Server-sent events: one `snapshot` event per interval until the client goes."""
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Accel-Buffering", "no")  # a reverse proxy must not buffer it
            self.end_headers()
            self.close_connection = True
            try:
                self.wfile.write(b"retry: 2000\n\n")
                while not api.closing.is_set():
                    try:
                        event = b"event: snapshot\ndata: " + api.snapshots.get() + b"\n\n"
                    except (BufferStoreError, duckdb.Error) as exc:  # starting or stopping
                        event = b"event: unavailable\ndata: " + to_json(str(exc)) + b"\n\n"
                    self.wfile.write(event)
                    self.wfile.flush()
                    api.closing.wait(EVENT_INTERVAL)
            except (BrokenPipeError, ConnectionResetError):
                return  # the viewer closed the page

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


def _buffer_writable(api: ApiServer) -> bool:
    """The buffer is open, its directory is writable and its disk has room for a batch."""
    store = api.parts.store
    if store is None:
        return False
    directory = api.parts.config.buffer.path.parent
    try:
        disk = os.statvfs(directory)
    except OSError:
        return False
    return os.access(directory, os.W_OK) and disk.f_bavail * disk.f_frsize >= MIN_FREE_BYTES
