"""What the commands share besides options: the two consoles, `error: ...` exits, the config.

rich and the config's pydantic models are imported on first use, not when the CLI is loaded.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from gateway.config import GatewayConfig


@functools.cache
def out() -> Console:
    """The console on stdout (it looks up sys.stdout at each print, so test runners see it)."""
    from rich.console import Console

    return Console()


@functools.cache
def err() -> Console:
    """The console on stderr; soft wrap keeps a long message on one line for scripts."""
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` on stderr; the caller raises the Exit returned.

    Exit codes: 1 something failed, 2 bad input on the command line (and `sql`'s 3: the
    answer printed was cut at the API's row limit).
    """
    from rich.markup import escape

    # Escaped: messages quote paths and SQL, whose brackets rich would take for markup.
    err().print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False)
    return typer.Exit(code)


def setup_logging(
    level: str,
    fmt: Literal["logfmt", "json", "text"] = "text",
    repeat_window: float = 60.0,
    repeat_burst: int = 5,
) -> None:
    from gateway.logs import configure_logging

    configure_logging(
        level, fmt, repeat_window=repeat_window, repeat_burst=repeat_burst, stream=sys.stderr
    )


def load_config(path: Path | None) -> GatewayConfig:
    """The config file given with -c, or the defaults; raises ConfigError naming file and key."""
    from gateway.config import GatewayConfig
    from gateway.config import load_config as load

    return load(path) if path else GatewayConfig()


def buffer_path(config: Path | None, buffer: Path | None) -> Path:
    """-b if given (the config is not read then), else the config's `buffer.path`."""
    if buffer is not None:
        return buffer
    return Path(load_config(config).buffer.path)
