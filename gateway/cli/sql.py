"""`edge-gateway sql`: one read-only statement over the buffer, through a running gateway's API,
or on the file itself when no gateway runs.

Through the API an answer is at most the gateway's `api.sql_row_limit` rows, and the API can
neither page nor say that it cut. Paging here by wrapping the statement in LIMIT/OFFSET would
run each page on a fresh snapshot while readings arrive, in an order the statement need not
fix: rows would be doubled or missed. So a cut answer is printed as it came, and the command
says so on stderr and exits with CUT_EXIT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal, cast

import typer

from gateway.cli.common import buffer_path, fail, out
from gateway.cli.options import BufferOption, ConfigOption, TokenOption

if TYPE_CHECKING:
    pass

FORMATS = ("table", "csv", "json")
CUT_EXIT = 3  # not 1: the rows printed are right, only not all of them


def sql(
    query: Annotated[str, typer.Argument(help="One SELECT statement.")],
    config: ConfigOption = None,
    buffer: BufferOption = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many rows.")] = None,
    token: TokenOption = None,
) -> None:
    """Query the buffer with read-only SQL, whether the gateway is running or stopped.

    A running gateway answers with at most its api.sql_row_limit rows: a longer answer is
    printed cut, with an error on stderr and exit status 3.
    """
    from gateway.apiclient import GatewayApi
    from gateway.errors import GatewayError
    from gateway.output import render
    from gateway.sqlclient import query_file

    if fmt not in FORMATS:
        raise fail(f"--format must be table, csv or json, not {fmt!r}", 2)
    cut = False
    try:
        path = buffer_path(config, buffer)
        api = GatewayApi.find(path, token)
        if api is None:
            table = query_file(path, query, limit)
        else:
            table = api.sql(query, limit)
            cut = api.cut_short(table.num_rows, limit)
    except GatewayError as exc:
        raise fail(str(exc)) from None
    render(table, cast(Literal["table", "csv", "json"], fmt), out())
    if cut:
        rows = table.num_rows
        raise fail(
            f"the answer was cut at {rows} rows, the running gateway's api.sql_row_limit, and "
            f"its API cannot page: narrow the query, raise api.sql_row_limit in the gateway's "
            f"config, or pass --limit {rows} if {rows} rows are what you want",
            CUT_EXIT,
        )
