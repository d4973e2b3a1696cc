"""Collectors for the tests: a real `opsagent server` process on SQLite, or on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.postgres import Postgres


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same storage tests run against both backends."""
    if request.param == "sqlite":
        return str(tmp_path / "collector.db")
    pg: Postgres = request.getfixturevalue("postgres")
    return pg.new_database()
