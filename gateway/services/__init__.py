"""Private local services (broker, warehouse emulators) started on free loopback ports for the demo,
the tests and the benchmarks."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from types import TracebackType
from typing import Self

from gateway.errors import GatewayError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, host: str = "127.0.0.1") -> bool:
    """Poll until something accepts TCP connections on host:port, or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class LocalServer:
    """A server run as a child process on 127.0.0.1 and a port; `with Server() as s:` runs it
    until the block ends. Subclasses give `command()` and, where theirs differs, how long it may
    take to listen and how it wants to be stopped."""

    name = "server"  # in error messages
    start_timeout = 10.0  # seconds until it must accept connections
    stop_signal = signal.SIGTERM
    stop_timeout = 5.0  # seconds after stop_signal before SIGKILL
    stderr = subprocess.DEVNULL

    def __init__(self, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The command line, prepared on each start; raises GatewayError if it cannot run here."""
        raise NotImplementedError

    def startup_failure(self) -> str:
        """The error message when it does not listen in time (it is stopped by then)."""
        return f"{self.name} did not start on port {self.port}"

    def start(self) -> Self:
        self._process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=self.stderr
        )
        if not wait_for_port(self.port, self.start_timeout):
            self.stop()
            raise GatewayError(self.startup_failure())
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(self.stop_signal)
        try:
            process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if process.stderr:
            process.stderr.close()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
