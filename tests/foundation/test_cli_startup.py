"""`edge-gateway --help` starts fast: it imports none of the heavy libraries (a list of what was
imported, not a timing), and its lazily mounted commands are listed as their modules say."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.core import TyperCommand, TyperGroup
from typer.main import get_command
from typer.testing import CliRunner

from gateway.cli import app
from gateway.cli.lazy import LazyGroup

# Each costs tens to hundreds of milliseconds to import; a command imports it when it runs.
HEAVY = {
    "pyarrow",
    "duckdb",
    "paho",
    "confluent_kafka",
    "snowflake",
    "pydantic",
    "fastavro",
    "cryptography",
    "prometheus_client",
    "cel",
    "common_expression_language",
    "yaml",
    "orjson",
}
# The root's own help needs no more than typer: not rich (typer's rich help alone costs more
# than 100 ms), not the modules of the mounted commands, not the HTTP client.
NOT_FOR_ROOT_HELP = {
    "rich",
    "urllib.request",
    "gateway.apiclient",
    "gateway.sinks.commands",
    "gateway.rules.commands",
    "gateway.buffer.commands",
    "simulators.commands",
}


def imported_by(*args: str) -> set[str]:
    """Every module `python -m gateway *args` imports, from -X importtime's report."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Usage:" in result.stdout
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    modules.discard("imported package")  # the report's header
    assert "gateway.cli.root" in modules  # the report is the one we think it is
    return modules


def packages(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


def test_root_help_imports_nothing_heavy() -> None:
    modules = imported_by("--help")
    assert packages(modules) & HEAVY == set()
    assert {m for m in modules if m in NOT_FOR_ROOT_HELP or m.startswith("rich.")} == set()


@pytest.mark.parametrize(
    "command",
    [
        "run",
        "sql",
        "export",
        "status",
        "demo",
        "config check",
        "sinks",
        "replay",
        "rules",
        "rules test",
        "buffer check",
        "simulate load",
    ],
)
def test_a_commands_help_imports_nothing_heavy(command: str) -> None:
    # Typer (0.29) converts every parsed option, --help too, with a pydantic TypeAdapter, so
    # past the root's own --help, pydantic comes with typer, whatever the command imports.
    assert packages(imported_by(*command.split(), "--help")) & (HEAVY - {"pydantic"}) == set()


def root() -> tuple[LazyGroup, typer.Context]:
    group = get_command(app)
    assert isinstance(group, LazyGroup)
    return group, typer.Context(group, info_name="edge-gateway")


def test_mounted_commands_are_listed_with_the_help_their_modules_give() -> None:
    group, ctx = root()
    listed = group.get_help(ctx)
    assert all(group.lazy.peek(name) is None for name in group.mounts)  # listing loaded none
    for name, mount in group.mounts.items():
        loaded = group.get_command(ctx, name)
        assert loaded is not None
        stated = TyperCommand(name, help=mount.help)
        assert loaded.get_short_help_str(1000) == stated.get_short_help_str(1000), name
    assert group.get_help(ctx) == listed  # once loaded, the listing is the same


def test_commands_keep_their_order() -> None:
    group, ctx = root()
    assert group.list_commands(ctx) == [
        "sinks",
        "replay",
        "run",
        "sql",
        "export",
        "status",
        "demo",
        "config",
        "rules",
        "simulate",
        "buffer",
    ]
    assert all(isinstance(group.get_command(ctx, n), TyperGroup) for n in ("rules", "config"))


def test_a_mistyped_mounted_command_gets_a_suggestion() -> None:
    result = CliRunner().invoke(app, ["rulez"])
    assert result.exit_code == 2
    assert "No such command 'rulez'. Did you mean 'rules'?" in result.output
