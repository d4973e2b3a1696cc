"""The report on real servers: unused indexes, dead rows, and pg_stat_statements when there."""

from __future__ import annotations

import psycopg
import pytest

from agent.dbmaint import DbError
from agent.dbmaint.report import report_database
from agent.dbmaint.tasks import run_maintenance
from tests.dbmaint.conftest import DSN_ENV, make_spec, one, wait_for


def seeded(url):
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id int PRIMARY KEY, kind text UNIQUE, "
                     "created_at timestamptz, body text) WITH (autovacuum_enabled = false)")
        conn.execute("CREATE INDEX events_created_at ON events (created_at)")
        conn.execute("CREATE INDEX events_body ON events (body)")  # created, never used
        conn.execute("INSERT INTO events SELECT i, 'k' || i, now() - i * interval '1 hour', "
                     "repeat('x', 200) FROM generate_series(1, 4000) i")
        conn.execute("DELETE FROM events WHERE id <= 1000")
        conn.execute("SET enable_seqscan = off")
        conn.execute("SELECT count(*) FROM events WHERE created_at > now() - interval '1 day'")
    # statistics reach the views a moment after the session ends
    assert wait_for(lambda: one(url, "SELECT idx_scan > 0 FROM pg_stat_user_indexes "
                                     "WHERE indexrelname = 'events_created_at'"))
    assert wait_for(lambda: one(url, "SELECT n_dead_tup = 1000 FROM pg_stat_user_tables "
                                     "WHERE relname = 'events'"))


def test_unused_indexes_and_dead_rows(db):
    seeded(db)
    report = report_database(make_spec(report={}))
    assert [ix.index for ix in report.unused_indexes] == ["public.events_body"]
    (ix,) = report.unused_indexes
    assert ix.table == "public.events" and ix.size_bytes > 0
    assert ix.definition == "CREATE INDEX events_body ON public.events USING btree (body)"
    (t,) = report.tables
    assert (t.table, t.live_rows, t.dead_rows, t.dead_percent) == ("public.events", 3000, 1000,
                                                                   25.0)
    heap = one(db, "SELECT pg_relation_size('events')")
    assert t.table_bytes == heap and t.bloat_bytes == heap // 4
    assert t.total_bytes > heap and t.last_vacuum is None and t.last_analyze is None
    assert report.slow_queries is None
    assert report.slow_queries_note.startswith("pg_stat_statements is not installed in this "
                                               "database")
    assert report.target.startswith("postgres 127.0.0.1:") and report.server_version
    assert report.summary() == ("no query statistics (pg_stat_statements unavailable), "
                                "1 unused index, 1000 dead rows in 1 table")


def test_a_scheduled_run_carries_the_report_after_its_vacuum(db):
    seeded(db)
    result = run_maintenance(make_spec(vacuum={"tables": ["events"]},
                                       report={"slow_queries": 0, "unused_indexes": False}))
    vacuum, task = result.tasks
    assert vacuum.status == "ok" and task.task == "report" and task.status == "ok"
    assert result.report is not None and result.report.unused_indexes is None
    assert result.report.slow_queries is None and result.report.slow_queries_note == ""
    assert [(t.table, t.dead_rows) for t in result.report.tables] == [("public.events", 0)]
    assert task.reason == "0 dead rows in 1 table"
    assert result.as_dict()["report"]["tables"][0]["dead_rows"] == 0


def test_an_extension_created_but_not_preloaded_is_said_so(db):
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
    report = report_database(make_spec(report={"unused_indexes": False, "bloat": False}))
    assert report.slow_queries is None and report.tables is None
    assert report.slow_queries_note == (
        "pg_stat_statements is created in this database but its library is not loaded: add "
        "it to shared_preload_libraries and restart PostgreSQL")


def test_the_slow_query_you_ran_is_the_slowest(stats_server, monkeypatch):
    url = stats_server.new_database()
    monkeypatch.setenv(DSN_ENV, url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
        conn.execute("SELECT pg_sleep(0.3)")
        for i in range(20):
            conn.execute("SELECT %s::int + 1", [i])
    report = report_database(make_spec(report={"slow_queries": 50}))
    assert report.slow_queries_note == ""
    top = report.slow_queries[0]
    assert top.query == "SELECT pg_sleep($1)", report.slow_queries
    assert top.calls == 1 and top.mean_ms >= 300 and top.max_ms >= 300
    assert top.total_ms == pytest.approx(top.mean_ms)
    fast = [q for q in report.slow_queries if q.query == "SELECT $1::int + $2"]
    assert fast and fast[0].calls == 20 and fast[0].mean_ms < 100, report.slow_queries
    means = [q.mean_ms for q in report.slow_queries]
    assert means == sorted(means, reverse=True)
    two = report_database(make_spec(report={"slow_queries": 2})).slow_queries
    assert [q.query for q in two] == [q.query for q in report.slow_queries[:2]]


def test_an_unreachable_database_is_a_db_error_without_the_password(monkeypatch):
    from tests.harness.collector import free_port

    monkeypatch.setenv(DSN_ENV, f"postgresql://app:s3cret-pw@127.0.0.1:{free_port()}/app")
    with pytest.raises(DbError) as e:
        report_database(make_spec(report={}))
    assert str(e.value).startswith("postgres 127.0.0.1:")
    assert "s3cret-pw" not in str(e.value)
    monkeypatch.delenv(DSN_ENV)
    with pytest.raises(DbError, match=f"environment variable {DSN_ENV} \\(dsn_env\\) is not set"):
        report_database(make_spec(report={}))
