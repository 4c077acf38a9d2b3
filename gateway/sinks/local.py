"""Local upstreams for `edge-gateway demo`: a Snowflake emulator and a Kafka-compatible broker on
loopback, the sink configs that ship to them, and a look at what arrived there."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console

from gateway.sinks.config import KafkaSinkConfig, SnowflakeSinkConfig

DATABASE = "EDGE_DEMO"
SCHEMA = "IOT"
TOPIC_PREFIX = "edge"


class LocalUpstreams:
    """`with LocalUpstreams() as up:` runs fakesnow and Tansu (none when `enabled` is false)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._stack = contextlib.ExitStack()
        self.snow: Any = None
        self.kafka: Any = None

    def __enter__(self) -> LocalUpstreams:
        if not self.enabled:
            return self
        from gateway.services.fakesnow import FakeSnow
        from gateway.services.tansu import Tansu

        try:
            self.kafka = self._stack.enter_context(Tansu())
            self.snow = self._stack.enter_context(FakeSnow())
            self.snow.create_database(DATABASE)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()

    def sink_configs(self) -> list[SnowflakeSinkConfig | KafkaSinkConfig]:
        if not self.enabled:
            return []
        batching = {"max_rows": 5000, "max_age": "2s"}
        return [
            SnowflakeSinkConfig.model_validate(
                {
                    "type": "snowflake",
                    "name": "warehouse",
                    "account": self.snow.account,
                    "user": self.snow.user,
                    "password": self.snow.password,
                    "database": DATABASE,
                    "schema": SCHEMA,
                    "host": self.snow.host,
                    "port": self.snow.port,
                    "protocol": "http",
                    "batching": batching,
                }
            ),
            KafkaSinkConfig.model_validate(
                {
                    "type": "kafka",
                    "name": "kafka",
                    "bootstrap_servers": self.kafka.bootstrap_servers,
                    "topic": TOPIC_PREFIX + ".{site}.{metric}",
                    "alerts_topic": TOPIC_PREFIX + ".alerts",
                    "batching": batching,
                }
            ),
        ]

    def describe(self) -> str:
        if not self.enabled:
            return "upstream sinks: none (--sinks none)"
        return (
            f"upstream: Snowflake emulator on http://{self.snow.host}:{self.snow.port} "
            f"({DATABASE}.{SCHEMA}), Kafka-compatible broker on {self.kafka.bootstrap_servers}"
        )

    def counts(self) -> dict[str, int]:
        """Rows in the Snowflake tables and messages in the Kafka topics, asked upstream."""
        if not self.enabled:
            return {}
        figures: dict[str, int] = {}
        with contextlib.suppress(Exception):  # tables and topics appear with the first batch
            import snowflake.connector

            con = snowflake.connector.connect(
                **self.snow.connection_args(), database=DATABASE, schema=SCHEMA
            )
            try:
                for table in ("READINGS", "ALERTS"):
                    with contextlib.suppress(Exception):
                        cursor = con.cursor().execute(f"SELECT count(*) FROM {table}")
                        if cursor is not None:
                            figures[f"snowflake {table}"] = int(cursor.fetchall()[0][0])
            finally:
                con.close()
        with contextlib.suppress(Exception):
            from confluent_kafka import Consumer

            from gateway.sinks.kafka import partitions_from_start, read_to_end

            consumer = Consumer(
                {
                    "bootstrap.servers": self.kafka.bootstrap_servers,
                    "group.id": "demo-count",
                    "enable.partition.eof": True,
                }
            )
            try:
                # Counted by reading: Tansu's listed high watermarks lag behind its log.
                starts = partitions_from_start(consumer, TOPIC_PREFIX + ".")
                figures["kafka messages"] = sum(1 for _ in read_to_end(consumer, starts, 30.0))
            finally:
                consumer.close()
        return figures

    def show(self, console: Console) -> None:
        figures = self.counts()
        if figures:
            console.print(
                "upstream: " + ", ".join(f"{name} {n}" for name, n in sorted(figures.items()))
            )

    def how_to_query(self, buffer: Path) -> str:
        if not self.enabled:
            return ""
        args = self.snow.connection_args()
        return (
            "Query upstream while the demo runs (another terminal, same venv):\n"
            "  python -c \"import snowflake.connector as s; c = s.connect(user='fake', "
            f"password='snow', account='fakesnow', host='{args['host']}', port={args['port']}, "
            f"protocol='http', database='{DATABASE}', schema='{SCHEMA}'); "
            "print(c.cursor().execute('SELECT device, metric, count(*), avg(value) "
            "FROM readings GROUP BY ALL').fetchall())\"\n"
            '  python -c "from confluent_kafka import Consumer, TopicPartition as T; '
            f"c = Consumer({{'bootstrap.servers': '{self.kafka.bootstrap_servers}', "
            "'group.id': 'me'}); "
            "c.assign([T(t, 0, -2) for t in c.list_topics().topics "
            f"if t.startswith('{TOPIC_PREFIX}.')]); "
            'm = c.poll(5); print(m.topic(), m.headers(), m.value())"\n'
            f"  edge-gateway sinks --buffer {buffer}   (each sink's cursor and backlog)"
        )
