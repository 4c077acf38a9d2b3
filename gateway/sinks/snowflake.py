"""The Snowflake sink: each batch a Parquet file with a deterministic name, PUT to an internal
stage and loaded with COPY INTO ... MATCH_BY_COLUMN_NAME.

Exactly once: a staged name holds the sink, the gateway id, the buffer's id, the stream and the
positions, so it names these rows and no others, even with many gateways behind one sink name
and stage. A batch sent again (after an error or a crash) has the same rows and the same name,
so COPY INTO finds it in the table's load history and reports LOAD_SKIPPED instead of loading it
twice. Snowflake forgets a load after 64 days, so a resend of an attempt first tried longer ago
than `LOAD_HISTORY_HORIZON` (or one recorded under another name) loads into a scratch table and
inserts only event ids the target does not hold yet, as `edge-gateway replay` always does.

Errors of the connector become sink errors in `snowflake_errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gateway.errors import SinkError, SinkRejectedError
from gateway.sinks.base import Attempt, Rejection, Sink, WriteResult, span
from gateway.sinks.config import SnowflakeSinkConfig
from gateway.sinks.records import RecordEncoder, unencodable

try:
    import snowflake.connector
    from snowflake.connector.errors import Error, ProgrammingError
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "the Snowflake sink needs snowflake-connector-python: pip install 'edge-gateway[snowflake]'"
    ) from exc

logger = logging.getLogger(__name__)

TYPED_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "readings": [
        ("EVENT_ID", "VARCHAR NOT NULL"),
        ("EVENT_TIME", "TIMESTAMP_TZ NOT NULL"),
        ("DEVICE", "VARCHAR NOT NULL"),
        ("METRIC", "VARCHAR NOT NULL"),
        ("VALUE", "DOUBLE"),
        ("TEXT", "VARCHAR"),
        ("UNIT", "VARCHAR"),
        ("TOPIC", "VARCHAR"),
        ("TAGS", "VARIANT"),
        ("GATEWAY_ID", "VARCHAR NOT NULL"),
        ("INGEST_TIME", "TIMESTAMP_TZ NOT NULL"),
    ],
    "alerts": [
        ("EVENT_ID", "VARCHAR NOT NULL"),
        ("ALERT_TIME", "TIMESTAMP_TZ NOT NULL"),
        ("RULE_ID", "VARCHAR NOT NULL"),
        ("DEVICE", "VARCHAR NOT NULL"),
        ("METRIC", "VARCHAR"),
        ("SEVERITY", "VARCHAR NOT NULL"),
        ("STATE", "VARCHAR NOT NULL"),
        ("MESSAGE", "VARCHAR"),
        ("VALUE", "DOUBLE"),
        ("READING_EVENT_ID", "VARCHAR"),
        ("GATEWAY_ID", "VARCHAR NOT NULL"),
    ],
}
CONNECTOR_COLUMNS = [("RECORD_METADATA", "VARIANT"), ("RECORD_CONTENT", "VARIANT")]
_LOADED = {"LOADED", "LOAD_SKIPPED"}
# Snowflake keeps a table's load history for 64 days; a resend of an attempt first tried longer
# ago than this may find its file forgotten, so it takes the path that cannot load twice.
LOAD_HISTORY_HORIZON = 60 * 86400.0


@contextlib.contextmanager
def snowflake_errors(
    sink: str, doing: str, on_error: Callable[[], None] | None = None
) -> Iterator[None]:
    """The connector's errors in the block as sink errors, the driver's exception chained: a
    data exception (SQLSTATE class 22) as `SinkRejectedError`, since those rows will never
    load; any other (and OSError: PUT reads the file and talks to the network) as
    `SinkError(sink, "<doing>: <error>")`, after `on_error` (drop the connection)."""
    try:
        yield
    except ProgrammingError as exc:
        if (exc.sqlstate or "").startswith("22"):
            raise SinkRejectedError(sink, f"COPY refused the rows: {exc.msg}") from exc
        if on_error is not None:
            on_error()
        raise SinkError(sink, f"{doing}: {exc.msg}") from exc
    except (Error, OSError) as exc:
        if on_error is not None:
            on_error()
        raise SinkError(sink, f"{doing}: {exc}") from exc


def load_private_key(path: Path, passphrase: str | None) -> bytes:
    """The key-pair user's private key (PEM, PKCS#8, optionally encrypted) as DER bytes."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(
            path.read_bytes(), password=passphrase.encode() if passphrase else None
        )
    except OSError as exc:
        raise SinkError("snowflake", f"cannot read private key {path}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise SinkError(
            "snowflake", f"private key {path}: {exc} (wrong or missing passphrase?)"
        ) from exc
    return key.private_bytes(
        encoding=serialization.Encoding.DER,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def connection_args(config: SnowflakeSinkConfig) -> dict[str, Any]:
    """Arguments for `snowflake.connector.connect`, password or key pair (SNOWFLAKE_JWT)."""
    args: dict[str, Any] = {
        "account": config.account,
        "user": config.user,
        "database": config.database,
        "schema": config.schema_,
        "login_timeout": int(config.login_timeout),
        "network_timeout": int(config.network_timeout),
        "socket_timeout": int(config.network_timeout),
        "application": "edge-gateway",
        "session_parameters": {"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False},
    }
    if config.role:
        args["role"] = config.role
    if config.warehouse:
        args["warehouse"] = config.warehouse
    if config.host:
        args["host"] = config.host
    if config.port:
        args["port"] = config.port
    if config.protocol != "https":
        args["protocol"] = config.protocol
    if config.private_key_file is not None:
        passphrase = config.private_key_passphrase
        args["authenticator"] = "SNOWFLAKE_JWT"
        args["private_key"] = load_private_key(
            config.private_key_file, passphrase.get_secret_value() if passphrase else None
        )
    elif config.password is not None:
        args["password"] = config.password.get_secret_value()
    return args


def file_name(
    sink: str, gateway_id: str, buffer_id: str, stream: str, first: int, last: int
) -> str:
    """The staged file's name: the same rows always get the same name, and no other rows do
    (positions restart in every buffer, so its id is in it; fixed width, so one name is never
    the prefix of another)."""
    return f"{sink}-{gateway_id}-{buffer_id}-{stream}-{first:019d}-{last:019d}.parquet"


@dataclass(slots=True)
class _Encoded:
    """A batch made ready to stage: its Parquet file (None: every row was rejected)."""

    path: Path | None
    rejected: list[Rejection]

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class SnowflakeSink(Sink):
    """Loads batches with PUT + COPY INTO; `write_batch` returns once COPY reported the file."""

    def __init__(
        self,
        config: SnowflakeSinkConfig,
        gateway_id: str,
        buffer_id: str | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = config.name
        self.config = config
        self.gateway_id = gateway_id
        self.buffer_id = buffer_id  # the buffer's `buffer_uid`; needed to name staged files
        self._clock = clock  # wall clock, to judge an attempt's age against the load history
        self._encoder = RecordEncoder(gateway_id)
        # Lock order: _lock (the connection and the upload), then _encode_lock (the encoder's
        # DuckDB connection), then _ready_lock (files written ahead). `prepare` runs on the
        # forwarder's read-ahead thread and takes only the last two.
        self._lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self._ready_lock = threading.Lock()
        self._ready: dict[tuple[str, tuple[int, int, int]], _Encoded] = {}  # up to 2
        self._conn: Any = None
        self._prepared: set[str] = set()
        self._tmp = Path(tempfile.mkdtemp(prefix=f"edge-gateway-{config.name}-"))

    def table_for(self, stream: str) -> str:
        return self.config.table if stream == "readings" else self.config.alerts_table

    def columns_for(self, stream: str) -> list[tuple[str, str]]:
        return TYPED_COLUMNS[stream] if self.config.layout == "typed" else CONNECTOR_COLUMNS

    # -- connection -------------------------------------------------------------------------
    def _cursor(self) -> Any:
        if self._conn is None:
            with snowflake_errors(self.name, "cannot connect to Snowflake"):
                self._conn = snowflake.connector.connect(**connection_args(self.config))
            self._prepared.clear()
        return self._conn.cursor()

    def _reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _prepare(self, cur: Any, stream: str) -> None:
        """Create the stage and the stream's table when missing (once per connection)."""
        if stream in self._prepared:
            return
        cfg = self.config
        if cfg.create_objects:
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {cfg.database}.{cfg.schema_}")
            cur.execute(f"USE SCHEMA {cfg.database}.{cfg.schema_}")
            cur.execute(f"CREATE STAGE IF NOT EXISTS {cfg.stage}")
            table = self.table_for(stream)
            # Look before creating: the table's load history must stay untouched (an emulator
            # clears it on CREATE TABLE IF NOT EXISTS of an existing table).
            found = cur.execute(
                "SELECT count(*) FROM information_schema.tables "
                "WHERE table_schema = %s AND table_name = %s",
                (cfg.schema_, table),
            ).fetchall()
            if not found or not found[0][0]:
                columns = ", ".join(f"{n} {t}" for n, t in self.columns_for(stream))
                cur.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")
                logger.info(
                    "sink %s: created table %s.%s.%s", self.name, cfg.database, cfg.schema_, table
                )
        self._prepared.add(stream)

    # -- batches to Parquet -----------------------------------------------------------------
    def parquet_table(self, stream: str, batch: pa.Table) -> pa.Table:
        if self.config.layout == "kafka_connector":
            return self._encoder.metadata_and_content(stream, batch, self.table_for(stream))
        columns = {name for name, _ in TYPED_COLUMNS[stream]}
        out = batch.select([c for c in batch.column_names if c.upper() in columns and c != "tags"])
        if stream == "readings":
            out = out.append_column("tags", self._encoder_tags(batch))
        gateway = pa.array([self.gateway_id] * batch.num_rows, pa.string())
        out = out.append_column("gateway_id", gateway)
        return out.rename_columns([c.upper() for c in out.column_names])

    def _encoder_tags(self, batch: pa.Table) -> pa.ChunkedArray:
        """Tags as a Parquet MAP, which COPY turns into an OBJECT in the VARIANT column."""
        table = self._encoder._query(
            "SELECT CAST(json(coalesce(tags, '{}')) AS MAP(VARCHAR, VARCHAR)) AS t FROM _batch",
            batch.select(["id", "tags"]),
        )
        return table.column("t")

    def _oversized(self, table: pa.Table, batch: pa.Table) -> list[Rejection]:
        limit = self.config.max_record_bytes
        too_big: list[Rejection] = []
        for column in table.column_names:
            data = table.column(column)
            if not pa.types.is_string(data.type):
                continue
            lengths = pc.fill_null(pc.binary_length(data), 0)
            hits = pc.indices_nonzero(pc.greater(lengths, limit)).to_pylist()
            for i in hits:
                position = int(batch.column("id")[i].as_py())
                too_big.append(Rejection(position, f"snowflake: {column} is over {limit} bytes"))
        return too_big

    # -- names ------------------------------------------------------------------------------
    def location(self) -> str:
        """The stage folder of this sink on this gateway and buffer (the gateway id is not a
        folder of its own: `..` is a valid gateway id)."""
        return f"@{self.config.stage}/{self.name}/{self.gateway_id}-{self.buffer_id}/"

    def staged_name(self, attempt: Attempt) -> str:
        if self.buffer_id is None:
            raise SinkError(self.name, "no buffer id to name the staged files with")
        return file_name(
            self.name, self.gateway_id, self.buffer_id, attempt.stream, attempt.first, attempt.last
        )

    def marks(self, batch: pa.Table, attempt: Attempt) -> dict[str, Any]:
        """The staged path of the first try: a resend under any other name (a changed gateway
        id, a split of the range) cannot lean on the load history."""
        return {"file": self.location() + self.staged_name(attempt)}

    def _loads_twice_if_plain(self, attempt: Attempt) -> bool:
        """Whether a plain COPY of this resend could load rows a second time: its first try
        used another name, or is older than the load history (or in the future: the clock
        stepped back since, and its age is unknown)."""
        if not attempt.resumed:
            return False
        marks = attempt.marks
        if marks is None or marks.get("file") != self.location() + self.staged_name(attempt):
            return True
        age = self._clock() - attempt.since_ms / 1000
        return age < 0 or age > LOAD_HISTORY_HORIZON

    # -- sending ----------------------------------------------------------------------------
    async def write_batch(self, batch: pa.Table, attempt: Attempt) -> WriteResult:
        return await asyncio.to_thread(self._write, batch, attempt)

    def prepare(self, stream: str, batch: pa.Table) -> None:
        """Write a batch's Parquet file ahead of its send: the forwarder calls this while the
        batch before is loading, so shaping and compressing overlap PUT and COPY."""
        encoded = self._encode(stream, batch)
        with self._ready_lock:
            self._ready[(stream, span(batch))] = encoded
            while len(self._ready) > 2:  # the batch being sent and the one read ahead
                self._ready.pop(next(iter(self._ready))).discard()

    def _encode(self, stream: str, batch: pa.Table) -> _Encoded:
        """The batch as a Parquet file in the sink's scratch folder, without the rows no
        Snowflake column can take (returned as rejections)."""
        with self._encode_lock:
            table = self.parquet_table(stream, batch)
        rejected = unencodable(stream, batch, "snowflake")
        refused = {r.position for r in rejected}
        rejected += [r for r in self._oversized(table, batch) if r.position not in refused]
        if rejected:
            bad = {r.position for r in rejected}
            keep = pa.array([p not in bad for p in batch.column("id").to_pylist()])
            table = table.filter(keep)
        if table.num_rows == 0:
            return _Encoded(None, rejected)
        path = self._tmp / f"encoded-{uuid.uuid4().hex}.parquet"
        pq.write_table(table, path, compression="zstd")
        return _Encoded(path, rejected)

    def _write(self, batch: pa.Table, attempt: Attempt) -> WriteResult:
        with self._ready_lock:
            encoded = self._ready.pop((attempt.stream, span(batch)), None)
        if encoded is None:
            encoded = self._encode(attempt.stream, batch)
        if encoded.path is None:
            return WriteResult(bytes_sent=0, rejected=encoded.rejected)
        with self._lock:
            name = self.staged_name(attempt)
            if attempt.replay:
                name = f"replay-{uuid.uuid4().hex[:12]}-{name}"
            path = encoded.path.rename(self._tmp / name)  # COPY finds the file by this name
            # The next try after a failure starts on a fresh connection (a data exception keeps
            # it: the rows are at fault, not the session).
            try:
                with snowflake_errors(self.name, f"upload failed: {path.name}", self._reset):
                    try:
                        nbytes = path.stat().st_size
                        cur = self._cursor()
                        try:
                            self._prepare(cur, attempt.stream)
                            self._load(cur, attempt, path)
                        finally:
                            cur.close()
                    except SinkError:  # the sink's own verdict (PUT, COPY status, connect)
                        self._reset()
                        raise
            finally:
                path.unlink(missing_ok=True)
            return WriteResult(bytes_sent=nbytes, rejected=encoded.rejected)

    def _load(self, cur: Any, attempt: Attempt, path: Path) -> None:
        cfg = self.config
        location = self.location()
        self._put(cur, path, location)
        table = self.table_for(attempt.stream)
        copy_options = "FILE_FORMAT=(TYPE=PARQUET) MATCH_BY_COLUMN_NAME=CASE_INSENSITIVE PURGE=TRUE"
        if not attempt.replay and not self._loads_twice_if_plain(attempt):
            try:
                results = cur.execute(
                    f"COPY INTO {table} FROM {location}{path.name} {copy_options}"
                ).fetchall()
                self._check(results, path.name)
            except (ProgrammingError, SinkRejectedError) as exc:
                if isinstance(exc, SinkRejectedError) or (exc.sqlstate or "").startswith("22"):
                    # Refused for good: the forwarder splits the batch into new files, so this
                    # one would stay in the stage forever.
                    with contextlib.suppress(Error):
                        cur.execute(f"REMOVE {location}{path.name}")
                raise
            return
        if not attempt.replay:
            logger.info(
                "sink %s: %s %d..%d was first tried %s; loading it through a scratch table",
                self.name,
                attempt.stream,
                attempt.first,
                attempt.last,
                "under another name"
                if attempt.marks is None or "file" not in attempt.marks
                else "longer ago than the load history reaches",
            )
        # A replay, or a resend the load history may not know: it may overlap rows loaded
        # before: load into a scratch table, then insert only event ids the target lacks.
        scratch = f"{table}_SCRATCH_{uuid.uuid4().hex[:8].upper()}"
        key = "EVENT_ID" if cfg.layout == "typed" else "RECORD_CONTENT:event_id::VARCHAR"
        # Transient (no fail-safe), dropped below: COPY INTO does not load into temporary
        # tables everywhere (fakesnow).
        cur.execute(f"CREATE TRANSIENT TABLE {scratch} LIKE {table}")
        try:
            results = cur.execute(
                f"COPY INTO {scratch} FROM {location}{path.name} {copy_options}"
            ).fetchall()
            self._check(results, path.name)
            cur.execute(
                f"INSERT INTO {table} SELECT * FROM {scratch} s WHERE NOT EXISTS "
                f"(SELECT 1 FROM {table} t WHERE t.{key} = s.{key})"
            )
        finally:
            cur.execute(f"DROP TABLE IF EXISTS {scratch}")

    def _put(self, cur: Any, path: Path, location: str) -> None:
        """PUT the file; anything but UPLOADED is an error. SKIPPED means a file of that name is
        staged already, which COPY would load instead of ours: it can only be this batch's own
        from a try that stopped before COPY (names are unique per gateway and buffer), so it is
        removed and the send retried; OVERWRITE stays FALSE so a name shared by mistake (a
        copied buffer file) cannot replace another gateway's unloaded file."""
        result = cur.execute(f"PUT 'file://{path}' {location} AUTO_COMPRESS=FALSE OVERWRITE=FALSE")
        columns = [str(d[0]).lower() for d in result.description]
        rows = result.fetchall()
        status_at = columns.index("status") if "status" in columns else 6
        message_at = columns.index("message") if "message" in columns else None
        bad = [r for r in rows if str(r[status_at]).upper() != "UPLOADED"]
        if rows and not bad:
            return
        status = str(bad[0][status_at]).upper() if bad else "no status"
        message = (
            f" ({bad[0][message_at]})"
            if bad and message_at is not None and bad[0][message_at]
            else ""
        )
        then = "; sending it again"
        if status == "SKIPPED":
            then = "; removed the file staged before under that name, sending it again"
            with contextlib.suppress(Error):
                cur.execute(f"REMOVE {location}{path.name}")
        raise SinkError(
            self.name, f"PUT of {path.name} to {location}: {status}{message}, not UPLOADED{then}"
        )

    def _check(self, results: list[Any], name: str) -> None:
        for row in results:
            status = str(row[1]).upper()
            if status not in _LOADED:
                raise SinkRejectedError(self.name, f"COPY of {name}: {status}: {row[6]}")
            if status == "LOAD_SKIPPED":
                logger.info("sink %s: %s was loaded before; skipped", self.name, name)
        if not results:
            raise SinkError(self.name, f"COPY found no staged file {name}")

    async def aclose(self) -> None:
        def close() -> None:
            with self._lock, self._encode_lock:
                self._reset()
                self._encoder.close()
                with self._ready_lock:
                    self._ready.clear()  # their files go with the folder below
                for leftover in self._tmp.glob("*"):
                    leftover.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    self._tmp.rmdir()

        await asyncio.to_thread(close)
