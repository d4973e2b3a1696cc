"""VACUUM and REINDEX on a real PostgreSQL; REINDEX only inside its maintenance window."""

from __future__ import annotations

import time

import psycopg
import pytest

from agent.dbmaint import open_windows
from agent.dbmaint.tasks import run_maintenance
from agent.playbook.models.alerting import MaintenanceWindow
from tests.dbmaint.conftest import make_spec, one, wait_for

DEAD = "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = %s"


def with_dead_rows(url, table, *, rows=10000, delete=4000):
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, body text) "
                     "WITH (autovacuum_enabled = false)")
        conn.execute(f"INSERT INTO {table} SELECT i, repeat('x', 100) "
                     "FROM generate_series(1, %s) i", [rows])
        conn.execute(f"DELETE FROM {table} WHERE id <= %s", [delete])
    assert wait_for(lambda: one(url, DEAD, [table]) == delete), one(url, DEAD, [table])


def test_vacuum_of_named_tables_reclaims_their_dead_rows_only(db):
    with_dead_rows(db, "events")
    with_dead_rows(db, "other")
    spec = make_spec(vacuum={"tables": ["events"]})

    dry = run_maintenance(spec, check=True).tasks[0]
    assert (dry.status, dry.reason, dry.tables) == (
        "ok", "would VACUUM (ANALYZE) public.events", ("public.events",))
    assert one(db, DEAD, ["events"]) == 4000

    (task,) = run_maintenance(spec).tasks
    assert (task.status, task.reason, task.tables) == (
        "ok", "VACUUM (ANALYZE) public.events", ("public.events",))
    assert wait_for(lambda: one(db, DEAD, ["events"]) == 0), one(db, DEAD, ["events"])
    assert one(db, "SELECT last_vacuum IS NOT NULL AND last_analyze IS NOT NULL "
               "FROM pg_stat_user_tables WHERE relname = 'events'")
    assert one(db, DEAD, ["other"]) == 4000


def test_vacuum_without_tables_covers_the_whole_database(db):
    with_dead_rows(db, "events")
    with_dead_rows(db, "other", delete=100)
    (task,) = run_maintenance(make_spec(vacuum={"analyze": False})).tasks
    assert (task.status, task.reason) == ("ok", "VACUUM of the whole database")
    assert wait_for(lambda: one(db, "SELECT sum(n_dead_tup) FROM pg_stat_user_tables") == 0)
    assert one(db, "SELECT count(*) FROM pg_stat_user_tables WHERE last_vacuum IS NULL") == 0


def test_purge_then_vacuum_in_one_run(db):
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (created_at timestamptz, body text) "
                     "WITH (autovacuum_enabled = false)")
        conn.execute("INSERT INTO events SELECT now() - i * interval '1 day', 'x' "
                     "FROM generate_series(0, 99) i")
    spec = make_spec(purge=[{"table": "events", "column": "created_at", "older_than": "30d"}],
                     vacuum={"tables": ["events"]})
    purge, vacuum = run_maintenance(spec).tasks
    assert (purge.status, purge.rows, vacuum.status) == ("ok", 70, "ok")  # 30 to 99 days old
    assert wait_for(lambda: one(db, "SELECT n_dead_tup = 0 AND n_live_tup = 30 FROM "
                                    "pg_stat_user_tables WHERE relname = 'events'"))


def test_vacuum_of_a_missing_table_fails_before_vacuuming_anything(db):
    with_dead_rows(db, "events")
    (task,) = run_maintenance(make_spec(vacuum={"tables": ["events", "nosuch"]})).tasks
    assert task.status == "failed" and task.reason.startswith("no table nosuch")
    assert one(db, DEAD, ["events"]) == 4000


def filenode(url, index):
    return one(url, "SELECT pg_relation_filenode(%s::regclass)", [index])


@pytest.fixture
def indexed(db):
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id int PRIMARY KEY, created_at timestamptz)")
        conn.execute("CREATE INDEX events_created_at ON events (created_at)")
        conn.execute("INSERT INTO events SELECT i, now() FROM generate_series(1, 1000) i")
        conn.execute("CREATE TABLE plain (x int)")  # no index: never reindexed
    return db


REINDEX = {"reindex": {"tables": ["events"], "window": "patching"}}


def test_reindex_is_skipped_outside_its_window_and_runs_inside(indexed):
    before = filenode(indexed, "events_created_at")
    spec = make_spec(**REINDEX)

    closed = run_maintenance(spec, in_window=lambda name: False).tasks[0]
    assert (closed.status, closed.reason) == ("skipped", "maintenance window patching is not open")
    unknown = run_maintenance(spec).tasks[0]
    assert unknown.status == "skipped"
    assert unknown.reason == ("runs only inside maintenance window patching, and no window "
                              "information was given")
    dry = run_maintenance(spec, in_window=lambda name: name == "patching", check=True).tasks[0]
    assert (dry.status, dry.reason) == ("ok", "would REINDEX TABLE CONCURRENTLY public.events")
    assert filenode(indexed, "events_created_at") == before

    asked = []
    result = run_maintenance(spec, in_window=lambda name: asked.append(name) or True)
    (task,) = result.tasks
    assert asked == ["patching"]
    assert (task.status, task.reason, task.tables) == (
        "ok", "REINDEX TABLE CONCURRENTLY public.events", ("public.events",))
    assert filenode(indexed, "events_created_at") != before
    assert one(indexed, "SELECT bool_and(indisvalid) FROM pg_index WHERE indrelid = "
               "'events'::regclass")


def test_windows_from_the_playbook_decide(indexed):
    hour = 3600.0
    now = time.time()
    window = MaintenanceWindow.model_validate(
        {"name": "patching", "from": _iso(now - hour), "until": _iso(now + hour)})
    spec = make_spec(**REINDEX)
    assert run_maintenance(spec, in_window=open_windows([window], now)).tasks[0].status == "ok"
    later = run_maintenance(spec, in_window=open_windows([window], now + 2 * hour)).tasks[0]
    assert later.status == "skipped"
    other = run_maintenance(spec, in_window=open_windows([], now)).tasks[0]
    assert other.status == "skipped"


def _iso(epoch):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def test_reindex_without_tables_rebuilds_every_indexed_table(indexed):
    with psycopg.connect(indexed, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA archive")
        conn.execute("CREATE TABLE archive.log (at int) PARTITION BY RANGE (at)")
        conn.execute("CREATE INDEX ON archive.log (at)")
        conn.execute("CREATE TABLE archive.log_1 PARTITION OF archive.log FOR VALUES FROM (0) "
                     "TO (10)")
        conn.execute("CREATE TABLE archive.log_2 PARTITION OF archive.log FOR VALUES FROM (10) "
                     "TO (20)")
    before = filenode(indexed, "events_pkey")
    dry = run_maintenance(make_spec(reindex={}), check=True).tasks[0]
    assert dry.tables == ("archive.log_1", "archive.log_2", "public.events")
    (task,) = run_maintenance(make_spec(reindex={"concurrently": False})).tasks
    assert (task.status, task.tables) == ("ok", dry.tables), task.reason
    assert task.reason == "REINDEX TABLE archive.log_1, archive.log_2, public.events"
    assert filenode(indexed, "events_pkey") != before


def test_a_window_function_that_raises_fails_the_task_only(indexed):
    def broken(name):
        raise LookupError(name)

    spec = make_spec(vacuum={}, **REINDEX)
    vacuum, reindex = run_maintenance(spec, in_window=broken).tasks
    assert vacuum.status == "ok"
    assert (reindex.status, reindex.reason) == (
        "failed", "cannot tell whether maintenance window patching is open: LookupError: "
        "patching")


def test_a_cancelled_concurrent_reindex_leaves_no_invalid_index(indexed):
    """REINDEX CONCURRENTLY waits for older snapshots; cancelled at the run's timeout, it
    leaves an invalid events_created_at_ccnew behind, which the run drops."""
    blocker = psycopg.connect(indexed)
    try:
        blocker.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        blocker.execute("SELECT 1")  # holds a snapshot, locks nothing of events
        started = time.monotonic()
        (task,) = run_maintenance(make_spec(reindex={"tables": ["events"]}, timeout="1s")).tasks
        took = time.monotonic() - started
    finally:
        blocker.close()
    assert task.status == "failed"
    assert task.reason.startswith("public.events: cancelled at the run's timeout (1s); "
                                  "dropped its leftover invalid index public.events_"), task.reason
    assert task.reason.endswith("_ccnew (0 of 1 tables done)"), task.reason
    assert took < 5
    assert one(indexed, "SELECT count(*) FROM pg_index WHERE indrelid = 'events'::regclass "
               "AND NOT indisvalid") == 0
    assert one(indexed, "SELECT count(*) FROM pg_index WHERE indrelid = 'events'::regclass") == 2


def test_an_older_leftover_is_not_ours_to_drop(indexed):
    """An invalid *_ccnew index that was there before looks like another session's rebuild in
    progress: the run leaves it alone."""
    with psycopg.connect(indexed, autocommit=True) as conn:
        conn.execute("CREATE INDEX events_x_ccnew ON events (created_at)")
        conn.execute("UPDATE pg_index SET indisvalid = false "
                     "WHERE indexrelid = 'events_x_ccnew'::regclass")
    blocker = psycopg.connect(indexed)
    try:
        blocker.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        blocker.execute("SELECT 1")
        (task,) = run_maintenance(make_spec(reindex={"tables": ["events"]}, timeout="1s")).tasks
    finally:
        blocker.close()
    assert task.status == "failed" and "dropped its leftover invalid index" in task.reason
    assert "events_x_ccnew" not in task.reason
    assert one(indexed, "SELECT count(*) FROM pg_class WHERE relname = 'events_x_ccnew'") == 1


def test_tasks_after_a_lost_connection_fail_with_that_reason(indexed):
    spec = make_spec(purge=[{"table": "events", "column": "created_at", "older_than": "1d"}],
                     reindex={"tables": ["events"]})
    # the purge's statement kills its own backend: the connection is gone for the reindex
    with psycopg.connect(indexed, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION die() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                     "PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$")
        conn.execute("CREATE TRIGGER die BEFORE DELETE ON events FOR EACH STATEMENT "
                     "EXECUTE FUNCTION die()")
    purge, reindex = run_maintenance(spec, now=time.time() + 2 * 86400).tasks
    assert purge.status == "failed" and "terminat" in purge.reason, purge.reason
    assert reindex.status == "failed"
    assert reindex.reason.startswith("not run: the connection to postgres 127.0.0.1:")
