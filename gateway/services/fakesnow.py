"""A private Snowflake emulator (fakesnow in server mode) on 127.0.0.1 and a free port, run as its
own process, for the demo, the tests and the benchmarks."""

from __future__ import annotations

import signal
import subprocess
import sys
from types import TracebackType
from typing import Any

from gateway.errors import GatewayError
from gateway.services import free_port, wait_for_port


class FakeSnow:
    """`with FakeSnow() as snow:` serves the Snowflake HTTP API (data in memory) until the block
    ends; `connection_args()` are what `snowflake.connector.connect` needs to reach it."""

    user = "fake"
    password = "snow"  # noqa: S105 (the emulator accepts any password)
    account = "fakesnow"

    def __init__(self, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> FakeSnow:
        try:
            import fakesnow  # noqa: F401
        except ImportError:
            raise GatewayError(
                "the local Snowflake emulator is fakesnow: pip install 'edge-gateway[dev]'"
            ) from None
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-W",
                "ignore",
                "-m",
                "fakesnow",
                "-s",
                "--host",
                self.host,
                "-p",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_for_port(self.port, 30.0):
            self.stop()
            raise GatewayError(f"fakesnow did not start on port {self.port}")
        return self

    def connection_args(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "password": self.password,
            "account": self.account,
            "host": self.host,
            "port": self.port,
            "protocol": "http",
            "session_parameters": {"CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False},
        }

    def create_database(self, name: str) -> None:
        """Create a database; sessions should log in to a database that exists (as on Snowflake,
        and fakesnow keeps COPY load history per database)."""
        import snowflake.connector

        con = snowflake.connector.connect(**self.connection_args())
        try:
            con.cursor().execute(f"CREATE DATABASE IF NOT EXISTS {name}")
        finally:
            con.close()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGINT)  # fakesnow's server waits for SIGINT
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> FakeSnow:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
