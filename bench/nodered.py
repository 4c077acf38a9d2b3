"""Node-RED 4 as the rules benchmark's peer: installed with npm into `.bench/node-red` on first
use, started on its own flow file beside a private Mosquitto, editor and HTTP nodes off.

The flow is the benchmark's probe rule written the way a Node-RED user would: an `mqtt in` on
`sensors/#` (the background load comes through it too), a `switch` on the probe's topic, a
`switch` on `payload > 30`, and an `mqtt out` publishing the value to the command topic.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent / ".bench" / "node-red"
RED_JS = ROOT / "node_modules" / "node-red" / "red.js"
VERSION = "4"  # Node-RED 5 needs Node 22; Debian 12 has Node 20


def ensure_installed() -> Path:
    """red.js of Node-RED 4, installed with npm into .bench/node-red on first use."""
    if RED_JS.exists():
        return RED_JS
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise SystemExit("the rules benchmark's Node-RED peer needs node and npm on the PATH")
    ROOT.mkdir(parents=True, exist_ok=True)
    quiet = ["--no-audit", "--no-fund", "--loglevel=error"]
    package = f"node-red@{VERSION}"
    subprocess.run([npm, "install", "--prefix", str(ROOT), *quiet, package], check=True)
    return RED_JS


def installed_version() -> str:
    package = json.loads((RED_JS.parent / "package.json").read_text())
    return str(package["version"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def probe_flow(broker_port: int, probe_topic: str, command_topic: str) -> list[dict[str, object]]:
    return [
        {"id": "bench", "type": "tab", "label": "bench"},
        {
            "id": "broker",
            "type": "mqtt-broker",
            "name": "local",
            "broker": "127.0.0.1",
            "port": str(broker_port),
            "clientid": "nodered-bench",
            "autoConnect": True,
            "usetls": False,
            "protocolVersion": "4",
            "keepalive": "60",
            "cleansession": True,
        },
        {
            "id": "in",
            "type": "mqtt in",
            "z": "bench",
            "topic": "sensors/#",
            "qos": "1",
            "datatype": "auto-detect",
            "broker": "broker",
            "nl": False,
            "rap": True,
            "rh": 0,
            "inputs": 0,
            "wires": [["device"]],
        },
        {
            "id": "device",
            "type": "switch",
            "z": "bench",
            "property": "topic",
            "propertyType": "msg",
            "rules": [{"t": "eq", "v": probe_topic, "vt": "str"}],
            "checkall": "true",
            "repair": False,
            "outputs": 1,
            "wires": [["above"]],
        },
        {
            "id": "above",
            "type": "switch",
            "z": "bench",
            "property": "payload",
            "propertyType": "msg",
            "rules": [{"t": "gt", "v": "30", "vt": "num"}],
            "checkall": "true",
            "repair": False,
            "outputs": 1,
            "wires": [["out"]],
        },
        {
            "id": "out",
            "type": "mqtt out",
            "z": "bench",
            "topic": command_topic,
            "qos": "0",
            "retain": "false",
            "broker": "broker",
            "wires": [],
        },
    ]


class NodeRed:
    """`with NodeRed(workdir, broker_port, probe_topic, command_topic):` runs Node-RED on the
    probe flow (its HTTP server on 127.0.0.1 and a free port, editor off) until the block ends."""

    def __init__(self, workdir: Path, broker_port: int, probe_topic: str, command_topic: str):
        self.workdir = workdir
        self.flow = probe_flow(broker_port, probe_topic, command_topic)
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> NodeRed:
        red = ensure_installed()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "flows.json").write_text(json.dumps(self.flow))
        settings = self.workdir / "settings.js"
        settings.write_text(
            "module.exports = "
            + json.dumps(
                {
                    "uiHost": "127.0.0.1",
                    "uiPort": _free_port(),
                    "flowFile": "flows.json",
                    "userDir": str(self.workdir),
                    "httpAdminRoot": False,
                    "httpNodeRoot": False,
                    "credentialSecret": False,
                    "diagnostics": {"enabled": False},
                    "telemetry": {"enabled": False},
                    "logging": {"console": {"level": "warn"}},
                }
            )
            + ";\n"
        )
        log = (self.workdir / "node-red.log").open("wb")
        self._process = subprocess.Popen(
            ["node", str(red), "--settings", str(settings), "--userDir", str(self.workdir)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log(self) -> str:
        return (self.workdir / "node-red.log").read_text(errors="replace")

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
