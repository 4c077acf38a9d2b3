"""A private Snowflake emulator (fakesnow in server mode) on 127.0.0.1 and a free port, run as its
own process, for the demo, the tests and the benchmarks."""

from __future__ import annotations

import signal
import sys
from typing import Any

from gateway.errors import GatewayError
from gateway.services import LocalServer


class FakeSnow(LocalServer):
    """`with FakeSnow() as snow:` serves the Snowflake HTTP API (data in memory) until the block
    ends; `connection_args()` are what `snowflake.connector.connect` needs to reach it."""

    user = "fake"
    password = "snow"  # noqa: S105 (the emulator accepts any password)
    account = "fakesnow"

    name = "fakesnow"
    start_timeout = 30.0
    stop_signal = signal.SIGINT  # fakesnow's server waits for SIGINT

    def command(self) -> list[str]:
        try:
            import fakesnow  # noqa: F401
        except ImportError:
            raise GatewayError(
                "the local Snowflake emulator is fakesnow: pip install 'edge-gateway[dev]'"
            ) from None
        return [
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
        ]

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
