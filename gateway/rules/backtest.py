"""Backtests: run rules over buffered history, in arrival order; list what would have fired."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from gateway.model import ReadingColumns
from gateway.rules.actions import (
    AlertChange,
    Command,
    LogLine,
    Output,
    WebhookCall,
    iso_time,
)
from gateway.rules.engine import RuleEngine

PAGE = 10_000

FetchPage = Callable[[int, int], pa.Table]
"""(after id, page size) -> readings with id > after, ordered by id."""


def primed_runs(table: pa.Table) -> list[tuple[ReadingColumns, bool]]:
    """A page of history as runs of retained readings (prime=True) and the rest, in order."""
    if "retained" not in table.column_names:
        return [(ReadingColumns.of(table), False)]
    flags = [bool(f) for f in table.column("retained").to_pylist()]
    return ReadingColumns.of(table.drop_columns(["retained"])).runs(flags)


def history_pages(fetch: FetchPage, page: int = PAGE) -> Iterator[pa.Table]:
    last = 0
    while True:
        table = fetch(last, page)
        if table.num_rows == 0:
            return
        yield table
        last = int(table.column("id")[-1].as_py())
        if table.num_rows < page:
            return


def run_backtest(engine: RuleEngine, pages: Iterator[pa.Table], end: float) -> list[Output]:
    """Feed history page by page (as the live gateway would have), then advance to `end`."""
    outputs: list[Output] = []
    for table in pages:
        for run, prime in primed_runs(table):
            outputs.extend(engine.process(run, prime=prime))
    outputs.extend(engine.tick(end))
    return outputs


def describe(output: Output) -> dict[str, Any]:
    """One output as a row: when, which rule and device, what it would have done."""
    row: dict[str, Any] = {
        "time": iso_time(output.time),
        "rule": output.rule_id,
        "device": output.device,
    }
    if isinstance(output, Command):
        row["action"] = "mqtt"
        retain = " (retained)" if output.retain else ""
        row["detail"] = f"{output.topic} <- {output.payload} qos {output.qos}{retain}"
    elif isinstance(output, AlertChange):
        row["action"] = f"alert {output.state}"
        row["detail"] = f"[{output.severity}] {output.message}"
    elif isinstance(output, WebhookCall):
        row["action"] = "webhook"
        row["detail"] = f"{output.method} {output.url} {output.body}"
    else:
        assert isinstance(output, LogLine)
        row["action"] = f"log {output.level}"
        row["detail"] = output.message
    return row


def outputs_table(outputs: list[Output]) -> pa.Table:
    rows = [describe(o) for o in sorted(outputs, key=lambda o: o.time)]
    columns = ("time", "rule", "device", "action", "detail")
    return pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in columns})
