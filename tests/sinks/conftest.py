"""Fixtures for the sink tests: a real Tansu broker and a real fakesnow server per module, a
buffer to ship from, the buffer writer thread, and TCP proxies that can cut a sink off."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sinkhelpers import TcpProxy, WriterThread

from gateway.buffer.store import BufferStore
from gateway.services.fakesnow import FakeSnow
from gateway.services.tansu import Tansu


@pytest.fixture(scope="module")
def tansu() -> Iterator[Tansu]:
    with Tansu() as broker:
        yield broker


@pytest.fixture(scope="module")
def fakesnow() -> Iterator[FakeSnow]:
    with FakeSnow() as server:
        server.create_database("EDGE")  # as in an account: the database exists, the sink
        yield server  # creates its schema, stage and tables


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BufferStore]:
    buffer = BufferStore(tmp_path / "buffer.duckdb")
    yield buffer
    buffer.close()


@pytest.fixture
def on_writer() -> Iterator[WriterThread]:
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer-writer")
    yield WriterThread(pool)
    pool.shutdown(wait=True)


@pytest.fixture
def proxy_factory() -> Iterator[Callable[[int], TcpProxy]]:
    proxies: list[TcpProxy] = []

    def make(target_port: int) -> TcpProxy:
        proxy = TcpProxy(target_port).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.cut()
