"""The CLI's client of a running gateway's API: finding it through the runtime file, and errors
that name the place to act on. Against a stub server here; against a real gateway in
tests/api/test_cli_status_export.py and tests/security/test_api_access.py."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from gateway.apiclient import ApiError, GatewayApi, runtime_file
from gateway.errors import BufferStoreError, ReadOnlySqlError

TOKEN = "s3cret-token-value"


class Stub(BaseHTTPRequestHandler):
    """Answers each path with the (status, JSON body) in `answers`."""

    answers: ClassVar[dict[str, tuple[int, Any]]] = {}

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        status, body = self.answers.get(
            self.path, (404, {"error": f"no such endpoint: {self.path}"})
        )
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer()


@pytest.fixture
def stub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Stub.answers = {"/healthz": (200, {"status": "ok", "healthy": True})}
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def announce(buffer: Path, url: str) -> Path:
    """What a running gateway leaves next to its buffer."""
    runtime_file(buffer).write_text(json.dumps({"pid": 1, "api": url}))
    return buffer


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_a_stopped_gateway_is_not_found(tmp_path: Path) -> None:
    buffer = tmp_path / "buffer.duckdb"
    assert GatewayApi.find(buffer) is None  # no runtime file
    runtime_file(buffer).write_text("{not json")
    assert GatewayApi.find(buffer) is None
    announce(buffer, f"http://127.0.0.1:{closed_port()}")  # left behind by a killed gateway
    assert GatewayApi.find(buffer) is None


def test_only_an_http_address_is_trusted(tmp_path: Path) -> None:
    assert GatewayApi.find(announce(tmp_path / "b.duckdb", "file:///etc/passwd#")) is None


def test_a_running_gateway_is_found_stalled_or_not(tmp_path: Path, stub: str) -> None:
    buffer = announce(tmp_path / "b.duckdb", stub)
    assert GatewayApi.find(buffer, TOKEN) == GatewayApi(stub, TOKEN)
    # A stalled gateway still holds the file and answers SQL and status.
    Stub.answers["/healthz"] = (503, {"healthy": False, "stalled": ["writer"]})
    assert GatewayApi.find(buffer) == GatewayApi(stub)
    Stub.answers["/healthz"] = (500, {"error": "something else on that port"})
    assert GatewayApi.find(buffer) is None


def test_a_refused_token_says_where_to_give_it_and_never_echoes_it(stub: str) -> None:
    Stub.answers["/api/status"] = (401, {"error": "missing or wrong bearer token"})
    with pytest.raises(ApiError) as refused:
        GatewayApi(stub, TOKEN).get_json("/api/status")
    message = str(refused.value)
    assert stub in message and "--token" in message and "EDGE_GATEWAY_TOKEN" in message
    assert TOKEN not in message


def test_sql_errors_keep_their_kinds(stub: str) -> None:
    api = GatewayApi(stub)
    Stub.answers["/api/sql"] = (403, {"error": "SQL: DELETE statements are refused"})
    with pytest.raises(ReadOnlySqlError, match="DELETE statements are refused"):
        api.sql("DELETE FROM readings")
    Stub.answers["/api/sql"] = (400, {"error": "SQL: Parser Error: syntax error"})
    with pytest.raises(BufferStoreError, match="syntax error"):
        api.sql("SELEC 1")


def test_other_failures_name_the_url(stub: str) -> None:
    Stub.answers["/api/sinks"] = (503, {"error": "buffer is not open yet"})
    with pytest.raises(ApiError, match=r"/api/sinks: buffer is not open yet"):
        GatewayApi(stub).get_json("/api/sinks")
    gone = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(ApiError, match=f"the gateway's API at {gone} did not answer"):
        GatewayApi(gone).get_json("/api/status")


def test_cut_short_asks_nothing_when_the_answer_is_plainly_whole() -> None:
    nowhere = GatewayApi(f"http://127.0.0.1:{closed_port()}")  # any request would fail
    assert nowhere.cut_short(0) is False
    assert nowhere.cut_short(50, limit=50) is False
