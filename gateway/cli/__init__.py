"""The `edge-gateway` command line: one module per noun, shared options defined once, and one
client of a running gateway's local HTTP API.

    root.py     the root command; lists every noun, imports a noun's code only when it runs
    lazy.py     how nouns whose code lives beside their subsystem are mounted without importing it
    options.py  options several commands share (-c/--config, -b/--buffer, --token)
    common.py   the consoles, `error: ...` exits, loading the config
    run.py, config.py, sql.py, export.py, status.py, demo.py    the nouns implemented here

`sinks`/`replay`, `rules`, `buffer` and `simulate` live in gateway/sinks/commands.py,
gateway/rules/commands.py, gateway/buffer/commands.py and simulators/commands.py.

Nothing heavy (DuckDB, Arrow, paho, pydantic, rich) is imported until a command runs, so
`edge-gateway --help` starts fast (the one client of a running gateway's API is
gateway/apiclient.py); tests/foundation/test_cli_startup.py holds it to that.
"""

from gateway.cli.root import app, main

__all__ = ["app", "main"]
