"""Real PostgreSQL for the maintenance tests: a fresh database per test on the session's
server, and a second server with pg_stat_statements preloaded (a restart the shared server
cannot take while other tests use it)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from agent.playbook.models.dbmaint import DbMaintenanceSpec
from tests.harness.postgres import Postgres, _bin

DSN_ENV = "DBMAINT_TEST_DSN"


def make_spec(**fields: Any) -> DbMaintenanceSpec:
    """A spec from a playbook-like mapping; name and postgres default to the test's."""
    return DbMaintenanceSpec.model_validate(
        {"name": "app-db", "postgres": {"dsn_env": DSN_ENV}, **fields})


def wait_for(probe: Callable[[], Any], timeout: float = 15.0) -> Any:
    """probe()'s first truthy value; statistics reach the views a moment after the fact."""
    end = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > end:
            return value
        time.sleep(0.1)


def one(url: str, query: str, params: Any = None) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    return row[0] if row else None


@pytest.fixture
def db(postgres: Postgres, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database on the session's server; its URL is in $DBMAINT_TEST_DSN."""
    url = postgres.new_database()
    monkeypatch.setenv(DSN_ENV, url)
    return url


@pytest.fixture(scope="module")
def stats_server() -> Iterator[Postgres]:
    """A throw-away server with shared_preload_libraries = pg_stat_statements."""
    pg = Postgres().start()
    try:
        with psycopg.connect(pg.url(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        # pg_ctl restart reuses the options the server was started with (postmaster.opts)
        pg._as_postgres(_bin("pg_ctl"), "-D", pg.data, "-l", os.path.join(pg.dir, "log"),
                        "-w", "restart")
        yield pg
    finally:
        pg.stop()
