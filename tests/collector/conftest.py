"""Collectors for the tests: a real `opsagent server` process on SQLite, or on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.collector import CollectorProc
from tests.harness.postgres import Postgres


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[CollectorProc]:
    proc = CollectorProc(str(tmp_path / "collector.db"), tmp_path / "collector.log").start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    pg = Postgres().start()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same storage tests run against both backends."""
    if request.param == "sqlite":
        return str(tmp_path / "collector.db")
    pg: Postgres = request.getfixturevalue("postgres")
    return pg.new_database()
