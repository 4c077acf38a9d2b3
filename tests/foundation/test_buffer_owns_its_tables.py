"""No SQL on the buffer's tables outside gateway/buffer/: what the sinks, the API, the rules
and the CLI need from those tables are functions of the buffer's own modules (cursors and
attempts in gateway/buffer/outbox.py, figures in figures.py, history in history.py). A string
that reads, writes or joins one of the tables elsewhere fails this test."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import gateway
from gateway.buffer.schema import DDL

ROOT = Path(gateway.__file__).parent
TABLES = sorted(
    {m.group(1) for ddl in DDL for m in re.finditer(r"CREATE TABLE IF NOT EXISTS (\w+)", ddl)}
)
STATEMENT = re.compile(rf"\b(?:FROM|INTO|UPDATE|JOIN|TABLE)\s+({'|'.join(TABLES)})\b")
# Upstream Snowflake's tables share the names (READINGS, ALERTS): not the buffer's.
UPSTREAM = {ROOT / "sinks" / "snowflake.py", ROOT / "sinks" / "local.py"}


def sql_outside_the_buffer() -> list[str]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        if (ROOT / "buffer") in path.parents or path in UPSTREAM:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                match = STATEMENT.search(node.value)
                if match:
                    where = f"{path.relative_to(ROOT.parent)}:{node.lineno}"
                    found.append(f"{where}: {match.group(0)}")
    return found


def test_the_tables_are_known() -> None:
    assert {"readings", "quarantine", "alerts", "sink_cursors", "state"} <= set(TABLES)


def test_no_sql_on_the_buffers_tables_outside_gateway_buffer() -> None:
    assert sql_outside_the_buffer() == []
