"""One small client of a running gateway's local HTTP API (gateway/api/server.py).

DuckDB lets one process hold the buffer file, so while a gateway runs, commands that read the
buffer ask its API; when none runs they open the file read-only themselves. A running gateway
writes its API address next to its buffer (`<buffer>.runtime.json`, see
`Gateway._write_runtime_file` in gateway/app.py) and removes the file when it stops; `find()`
reads it and checks that the gateway answers.

Only the standard library is imported here; pyarrow only when an SQL answer is decoded.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import BufferStoreError, ReadOnlySqlError

if TYPE_CHECKING:
    import pyarrow as pa

ARROW_STREAM = "application/vnd.apache.arrow.stream"
HEALTH_TIMEOUT = 2.0  # seconds; a gateway that does not answer /healthz by then is not used


class ApiError(BufferStoreError):
    """The running gateway's API refused a request or did not answer; names its URL.

    A BufferStoreError because the API is the way to the buffer while the gateway runs: code
    that handled a failed query before handles this too.
    """


def runtime_file(buffer_path: Path) -> Path:
    """Where a gateway running on `buffer_path` writes its API address (gateway/app.py)."""
    return buffer_path.with_name(buffer_path.name + ".runtime.json")


@dataclass(frozen=True)
class GatewayApi:
    """The API of one running gateway: `url` like http://127.0.0.1:8765, and the token to send
    (`api.token` in its config; None when it has none)."""

    url: str
    token: str | None = None

    @classmethod
    def find(cls, buffer_path: Path, token: str | None = None) -> GatewayApi | None:
        """The API of a gateway running on this buffer if one answers, else None."""
        try:
            url = str(json.loads(runtime_file(buffer_path).read_text())["api"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # no runtime file (stopped) or one being written or removed
        if not url.startswith("http://"):
            return None  # the gateway writes http://host:port; the token goes nowhere else
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=HEALTH_TIMEOUT):  # noqa: S310
                return cls(url, token)
        except urllib.error.HTTPError as exc:
            # A stalled gateway answers 503 yet still holds the file and serves SQL and status.
            with exc:
                body = _json_or_none(exc.read())
            stalled = exc.code == 503 and isinstance(body, dict) and body.get("healthy") is False
            return cls(url, token) if stalled else None
        except (OSError, http.client.HTTPException):
            return None  # the file outlived its gateway (killed), or the port is someone else's

    def get_json(self, path: str, timeout: float = 10.0) -> Any:
        """GET one of the JSON views, e.g. /api/status or /api/sinks."""
        return json.loads(self._request(path, None, "application/json", timeout))

    def sql(self, sql: str, limit: int | None = None, timeout: float = 60.0) -> pa.Table:
        """One read-only statement through POST /api/sql.

        At most `limit` rows, and never more than the gateway's `api.sql_row_limit`: the API
        cuts longer answers without saying so; `cut_short` tells whether it did.
        """
        import pyarrow as pa

        body = json.dumps({"sql": sql, "limit": limit}).encode()
        answer = self._request("/api/sql", body, ARROW_STREAM, timeout)
        return pa.ipc.open_stream(answer).read_all()

    def cut_short(self, rows: int, limit: int | None = None) -> bool:
        """Whether an answer of `rows` rows, asked with `limit`, was cut at api.sql_row_limit.

        The API tells neither its cap nor whether it applied it, and it has no paging. So ask
        for rows+1 rows of a generated series: getting `rows` back means the cap is `rows`.
        An answer exactly as long as the cap reads as cut too: the API cannot tell them apart.
        """
        if rows == 0 or (limit is not None and rows >= limit):
            return False
        probe = self.sql(f"SELECT NULL AS probe FROM range({rows + 1})", rows + 1)
        return int(probe.num_rows) == rows

    def _request(self, path: str, body: bytes | None, accept: str, timeout: float) -> bytes:
        request = urllib.request.Request(  # noqa: S310 (the URL find() checked)
            f"{self.url}{path}",
            data=body,
            method="GET" if body is None else "POST",
            headers={"Accept": accept},
        )
        if body is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                answer: bytes = response.read()
                return answer
        except urllib.error.HTTPError as exc:
            with exc:
                found = _json_or_none(exc.read())
            message = str(found["error"]) if isinstance(found, dict) and "error" in found else ""
            message = message or f"HTTP {exc.code} {exc.reason}"
            if exc.code == 401:
                raise ApiError(
                    f"{self.url}: {message}; give the gateway's api.token with --token "
                    "or EDGE_GATEWAY_TOKEN"
                ) from None
            if path == "/api/sql" and exc.code == 403:
                raise ReadOnlySqlError(message) from None  # a write or file access, refused
            if path == "/api/sql" and exc.code == 400:
                raise BufferStoreError(message) from None  # the statement's own error
            raise ApiError(f"{self.url}{path}: {message}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise ApiError(f"the gateway's API at {self.url} did not answer: {exc}") from None


def _json_or_none(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None
