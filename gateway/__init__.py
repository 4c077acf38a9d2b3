"""Edge gateway: MQTT ingest, local rules, a durable DuckDB buffer and upstream sinks."""

from gateway.heap import arrow_allocates_with_malloc

__version__ = "0.1.0"

# Before anything imports pyarrow, which picks its allocator once (gateway/heap.py): the command
# line, the benchmarks and the tests all run the gateway on the same one.
arrow_allocates_with_malloc()
