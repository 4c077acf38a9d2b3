"""The root `edge-gateway` command: every noun, each importing its code only when it runs.

Help is click's plain layout, not typer's rich panels: those need typer.rich_utils, which
imports rich, its markdown (markdown-it) and syntax modules, and cost more than 100 ms before
anything is printed, while `edge-gateway --help` has 200 ms in all. Command output (tables,
the status view, progress bars) is still rich, imported by the command that prints it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import typer

from gateway.cli import config, demo, export, run, sql, status
from gateway.cli.lazy import LazyGroup, Mount


class Root(LazyGroup):
    """The nouns whose code lives beside their subsystem, and the order `--help` lists all in."""

    mounts: ClassVar[Mapping[str, Mount]] = {
        "sinks": Mount(
            "gateway.sinks.commands",
            "sinks",
            "Each sink's cursor, backlog (rows, age of the oldest), last error and throughput.",
        ),
        "replay": Mount(
            "gateway.sinks.commands",
            "replay",
            "Send rows ingested since --since to a sink again, without doubling what it holds.",
        ),
        "rules": Mount(
            "gateway.rules.commands",
            "app",
            "Check rule files and test them against buffered history.",
        ),
        "simulate": Mount(
            "simulators.commands",
            "app",
            "Simulated devices: play a scenario against a broker, check the gateway, or load it.",
        ),
        "buffer": Mount("gateway.buffer.commands", "app", "Check and recover the buffer file."),
    }
    # The order `--help` has always listed them in.
    order: ClassVar[Sequence[str]] = (
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
    )


app = typer.Typer(
    name="edge-gateway",
    help="IoT edge gateway: MQTT in, local rules, durable DuckDB buffer, Snowflake/Kafka out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    # click stops at 80 columns; the one-line helps were written for the wider rich layout.
    context_settings={"max_content_width": 120},
    cls=Root,
)
app.command("run")(run.run)
app.command("sql")(sql.sql)
app.command("export")(export.export)
app.command("status")(status.status)
app.command("demo")(demo.demo)
app.add_typer(config.app, name="config")


def main() -> None:
    app()
