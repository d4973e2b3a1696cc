"""The postgres probe against a throw-away PostgreSQL server (tests/harness/postgres.py)."""

from __future__ import annotations

import contextlib
import threading
import time

import psycopg
import pytest
from pydantic import ValidationError

from agent.playbook.models.checks import CheckSpec
from tests.checks.conftest import check
from tests.harness.collector import free_port

PASSWORD = "s3cret-Pw-42"


@pytest.fixture(scope="module")
def pg(postgres):
    """The server, with a role that must give a password (the harness trusts everyone)."""
    hba = f"{postgres.data}/pg_hba.conf"
    with open(hba) as f:
        rules = f.read()
    with open(hba, "w") as f:
        f.write("host all pwuser 127.0.0.1/32 scram-sha-256\n" + rules)
    with psycopg.connect(postgres.url(), autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS pwuser")
        conn.execute(f"CREATE ROLE pwuser LOGIN PASSWORD '{PASSWORD}'")
        conn.execute("SELECT pg_reload_conf()")
    return postgres


@pytest.fixture
def dsn(pg, monkeypatch):
    monkeypatch.setenv("CHECK_PG_DSN", pg.url())
    return pg.url()


def pg_check(**fields):
    return check(postgres={"dsn_env": "CHECK_PG_DSN", **fields})


def test_connect_and_query_is_healthy_with_connection_figures(dsn):
    out = pg_check(query="SELECT count(*) FROM pg_class", max_connections_percent=80,
                   long_query="5m")
    assert out.status == "healthy", out.message
    assert out.values["max_connections"] == 200.0
    assert out.values["connections"] >= 1
    assert out.values["connections_percent"] == pytest.approx(
        100 * out.values["connections"] / 200, abs=0.01)
    assert out.values["long_queries"] == 0.0
    assert "query ok" in out.message and "/200 connections" in out.message


def test_dsn_from_a_file(pg, tmp_path):
    path = tmp_path / "dsn"
    path.write_text(pg.url() + "\n")
    out = check(postgres={"dsn_file": str(path)})
    assert out.status == "healthy", out.message


def test_many_connections_make_it_degraded(dsn):
    held = [psycopg.connect(dsn) for _ in range(40)]
    try:
        out = pg_check(max_connections_percent=15)
        assert out.status == "degraded", out.message
        assert out.values["connections"] >= 41  # ours plus the probe's own
        assert out.values["connections_percent"] == pytest.approx(
            out.values["connections"] / 2, abs=0.01)
        assert "above 15%" in out.message
        assert pg_check(max_connections_percent=90).status == "healthy"
    finally:
        for conn in held:
            conn.close()


def test_a_long_running_query_makes_it_degraded(dsn):
    sleeper = psycopg.connect(dsn, autocommit=True)
    pid = sleeper.info.backend_pid
    thread = threading.Thread(target=lambda: _run_quietly(sleeper, "SELECT pg_sleep(30)"))
    thread.start()
    try:
        time.sleep(1.3)
        out = pg_check(long_query="1s")
        assert out.status == "degraded", out.message
        assert out.values["long_queries"] == 1.0
        assert "1 running longer than 1s" in out.message
        assert pg_check(long_query="1m").status == "healthy"
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_cancel_backend(%s)", [pid])
        thread.join(10)
        sleeper.close()


def _run_quietly(conn, sql):
    with contextlib.suppress(psycopg.errors.QueryCanceled):
        conn.execute(sql)


def test_wrong_password_is_unhealthy_and_the_password_is_never_shown(pg, monkeypatch):
    monkeypatch.setenv("CHECK_PG_DSN", f"postgresql://pwuser:wrong-{PASSWORD}@127.0.0.1:"
                                       f"{pg.port}/postgres")
    out = pg_check()
    assert out.status == "unhealthy"
    assert 'password authentication failed for user "pwuser"' in out.message
    assert PASSWORD not in out.message and "wrong-" not in out.message
    assert out.message.startswith(f"postgres 127.0.0.1:{pg.port}/postgres: ")
    monkeypatch.setenv("CHECK_PG_DSN", f"postgresql://pwuser:{PASSWORD}@127.0.0.1:"
                                       f"{pg.port}/postgres")
    assert pg_check().status == "healthy"


def test_closed_port_is_unhealthy(monkeypatch):
    port = free_port()
    monkeypatch.setenv("CHECK_PG_DSN", f"postgresql://u:{PASSWORD}@127.0.0.1:{port}/db")
    out = pg_check()
    assert out.status == "unhealthy"
    assert "Connection refused" in out.message
    assert PASSWORD not in out.message


def test_a_failing_query_and_a_slow_one_are_unhealthy(dsn):
    out = pg_check(query="SELECT * FROM no_such_table")
    assert out.status == "unhealthy"
    assert 'relation "no_such_table" does not exist' in out.message
    start = time.monotonic()
    out = pg_check(query="SELECT pg_sleep(5)", timeout="1s")
    assert out.status == "unhealthy"
    assert "the query did not finish within 1s" in out.message
    assert time.monotonic() - start < 4


def test_missing_dsn_sources_are_unhealthy(monkeypatch, tmp_path):
    monkeypatch.delenv("CHECK_PG_DSN", raising=False)
    assert pg_check().message == "environment variable CHECK_PG_DSN (dsn_env) is not set"
    out = check(postgres={"dsn_file": str(tmp_path / "none")})
    assert out.status == "unhealthy"
    assert out.message == f"cannot read dsn_file {tmp_path / 'none'}: No such file or directory"


def test_exactly_one_dsn_source_is_required():
    with pytest.raises(ValidationError, match="give one of dsn_env"):
        CheckSpec.model_validate({"name": "t", "postgres": {}})
    with pytest.raises(ValidationError, match="give one of dsn_env"):
        CheckSpec.model_validate({"name": "t", "postgres": {"dsn_env": "A", "dsn_file": "/f"}})


def test_a_malformed_dsn_is_not_quoted(monkeypatch):
    monkeypatch.setenv("CHECK_PG_DSN", f"host=127.0.0.1 password={PASSWORD} garbage")
    out = pg_check()
    assert out.status == "unhealthy"
    assert out.message == ("the DSN from dsn_env CHECK_PG_DSN is not a valid connection string "
                           "or URL")
