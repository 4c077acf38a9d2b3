"""A private Mosquitto on 127.0.0.1 and a free port, configured the way the gateway wants it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from gateway.errors import GatewayError
from gateway.services import LocalServer

# Mosquitto's default max_inflight_messages (20) lets only 20 unacked QoS 1 messages reach a
# consumer at once; the gateway acks in batches after each commit, so that would cap it at a few
# hundred messages a second. It must stay below 65,536: packet ids are 16 bits, and with more
# unacked messages two of them would share one (0, unlimited, allows that while a backlog
# drains). Mirrors deploy/mosquitto.conf.
# set_tcp_nodelay: without it, the broker holds a small message for the gateway until the
# previous segment is acknowledged; under load that adds ~5 ms to every rule's reaction.
BROKER_SETTINGS = """\
max_inflight_messages 20000
max_queued_messages 2000000
max_queued_bytes 0
persistent_client_expiration 14d
set_tcp_nodelay true
"""


def find_mosquitto() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    raise GatewayError(
        "mosquitto is not installed: run `sudo apt-get install mosquitto` (or `make setup`)"
    )


class Mosquitto(LocalServer):
    """`with Mosquitto() as broker:` runs a broker until the block ends; `restart()` keeps its port
    and, with `persistence=True`, its stored sessions and queued messages."""

    name = "mosquitto"
    stderr = subprocess.PIPE

    def __init__(
        self,
        port: int | None = None,
        *,
        persistence: bool = False,
        workdir: Path | None = None,
        extra_config: str = "",
    ) -> None:
        super().__init__(port)
        self.persistence = persistence
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.extra_config = extra_config
        self.log_path = self.workdir / "mosquitto.log"

    def _write_config(self) -> Path:
        conf = self.workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            BROKER_SETTINGS,
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            self.extra_config,
        ]
        if os.geteuid() == 0:
            # Started as root, Mosquitto switches to the `mosquitto` user, which cannot write
            # the log or the persistence file into a root-owned work dir: sessions would be
            # lost on restart without a word. Stay the user that started it.
            lines.append("user root")
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def command(self) -> list[str]:
        conf = self._write_config()
        return [find_mosquitto(), "-c", str(conf)]

    def startup_failure(self) -> str:
        log = self.log_path.read_text() if self.log_path.exists() else ""
        return f"{super().startup_failure()}: {log[-500:]}"

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a power cut would."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait(timeout=5)
            if process.stderr:
                process.stderr.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        super().__exit__(exc_type, exc, tb)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)
