"""Collectors for the tests: a real `opsagent server` process on SQLite, or on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.collector.store import Store
from tests.harness.collector import CollectorProc
from tests.harness.postgres import Postgres


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same storage tests run against both backends."""
    if request.param == "sqlite":
        return str(tmp_path / "collector.db")
    pg: Postgres = request.getfixturevalue("postgres")
    return pg.new_database()


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """The storage layer itself, on either backend."""
    s = Store(db_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[CollectorProc]:
    """A real `opsagent server` process on either backend."""
    proc = CollectorProc(db_url, tmp_path / "server.log").start()
    try:
        yield proc
    finally:
        proc.stop()
