"""Progress bars for long CLI operations (export, replay, backtest): rich on a terminal, quiet
otherwise, so scripts and logs do not fill with redraws."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Advance(Protocol):
    def __call__(self, amount: int) -> None: ...


@contextmanager
def progress_bar(console: Console, description: str, total: int | None) -> Iterator[Advance]:
    """`with progress_bar(console, "exporting", total) as advance: advance(rows)`."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )
    with progress:
        task = progress.add_task(description, total=total)

        def advance(amount: int) -> None:
            progress.advance(task, amount)

        yield advance
