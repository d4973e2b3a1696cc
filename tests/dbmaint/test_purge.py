"""Purges on a real PostgreSQL: exactly the old rows, in batches, each its own transaction."""

from __future__ import annotations

import itertools
import time

import psycopg
import pytest

from agent.dbmaint.tasks import run_maintenance
from tests.dbmaint.conftest import make_spec

DAY = 86400.0
NOW = time.time()


def seed(url, *, old=1050, new=300, column="timestamptz", table="events", partitioned=False):
    """``old`` rows 40-41 days old, ``new`` rows 0-13 days old, and a row-level trigger that
    records the transaction each deleted row went in. Partitioned: the old rows split across
    two partitions, the new ones in a third."""
    with psycopg.connect(url, autocommit=True) as conn:
        if partitioned:
            conn.execute(f"CREATE TABLE {table} (id bigserial, created_at {column} NOT NULL, "
                         "payload text, PRIMARY KEY (id, created_at)) PARTITION BY RANGE "
                         "(created_at)")
            bounds = ["MINVALUE", f"'{_ago(40.3)}'", f"'{_ago(20)}'", "MAXVALUE"]
            for i, (low, high) in enumerate(itertools.pairwise(bounds)):
                conn.execute(f"CREATE TABLE {table}_p{i} PARTITION OF {table} "
                             f"FOR VALUES FROM ({low}) TO ({high})")
        else:
            conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, created_at {column} "
                         "NOT NULL, payload text)")
        conn.execute(f"INSERT INTO {table} (created_at, payload) SELECT to_timestamp(%s) - "
                     "make_interval(days => 40) - i * interval '1 minute', 'old' "
                     "FROM generate_series(1, %s) i", [NOW, old])
        conn.execute(f"INSERT INTO {table} (created_at, payload) SELECT to_timestamp(%s) - "
                     "i * interval '1 hour', 'new' FROM generate_series(1, %s) i", [NOW, new])
        conn.execute("CREATE TABLE deleted_in (txid bigint)")
        conn.execute("CREATE FUNCTION note_delete() RETURNS trigger LANGUAGE plpgsql AS $$ "
                     "BEGIN INSERT INTO deleted_in VALUES (txid_current()); RETURN OLD; END $$")
        conn.execute(f"CREATE TRIGGER note AFTER DELETE ON {table} FOR EACH ROW "
                     "EXECUTE FUNCTION note_delete()")


def _ago(days):
    return time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(NOW - days * DAY))


def payloads(url, table="events"):
    with psycopg.connect(url) as conn:
        return dict(conn.execute(f"SELECT payload, count(*) FROM {table} GROUP BY 1").fetchall())


def transactions(url):
    with psycopg.connect(url) as conn:
        return [r[1] for r in conn.execute(
            "SELECT txid, count(*) FROM deleted_in GROUP BY 1 ORDER BY 1").fetchall()]


PURGE = {"table": "events", "column": "created_at", "older_than": "30d", "batch": 100}


def test_purge_deletes_exactly_the_old_rows_in_batches_of_their_own(db):
    seed(db)
    spec = make_spec(purge=[PURGE])

    dry = run_maintenance(spec, now=NOW, check=True)
    (task,) = dry.tasks
    assert (task.task, task.status, task.rows, task.batches) == ("purge events", "ok", 1050, 11)
    assert "would delete 1050 rows of public.events with created_at before" in task.reason
    assert payloads(db) == {"old": 1050, "new": 300}, "check deleted rows"
    assert transactions(db) == []

    result = run_maintenance(spec, now=NOW)
    (task,) = result.tasks
    assert result.ok and task.status == "ok", task.reason
    assert (task.rows, task.batches, task.tables) == (1050, 11, ("public.events",))
    assert result.rows_purged == 1050
    assert payloads(db) == {"new": 300}
    # ten full batches and the last 50, each committed in its own transaction
    assert transactions(db) == [100] * 10 + [50]

    again = run_maintenance(spec, now=NOW)
    assert (again.tasks[0].rows, again.tasks[0].batches) == (0, 0)
    assert again.tasks[0].reason.startswith("deleted 0 rows")


def test_a_partitioned_table_is_purged_partition_by_partition(db):
    seed(db, partitioned=True)
    with psycopg.connect(db) as conn:
        per_part = dict(conn.execute("SELECT tableoid::regclass::text, count(*) FROM events "
                                     "WHERE payload = 'old' GROUP BY 1").fetchall())
    assert sorted(per_part) == ["events_p0", "events_p1"] and min(per_part.values()) > 0
    batches = sum(-(-n // 100) for n in per_part.values())
    spec = make_spec(purge=[PURGE])
    dry = run_maintenance(spec, now=NOW, check=True).tasks[0]
    assert (dry.rows, dry.batches) == (1050, batches)
    (task,) = run_maintenance(spec, now=NOW).tasks
    assert (task.status, task.rows, task.batches) == ("ok", 1050, batches), task.reason
    assert payloads(db) == {"new": 300}
    assert sum(transactions(db)) == 1050 and len(transactions(db)) == batches


def test_an_exact_multiple_of_the_batch_takes_that_many_batches(db):
    seed(db, old=300, new=10)
    result = run_maintenance(make_spec(purge=[PURGE]), now=NOW)
    assert (result.tasks[0].rows, result.tasks[0].batches) == (300, 3)
    assert transactions(db) == [100, 100, 100]
    assert payloads(db) == {"new": 10}


@pytest.mark.parametrize("column", ["timestamp", "date"])
def test_timestamp_and_date_columns(db, column):
    seed(db, old=120, new=30, column=column)
    dry = run_maintenance(make_spec(purge=[PURGE]), now=NOW, check=True)
    assert dry.tasks[0].rows == 120
    result = run_maintenance(make_spec(purge=[PURGE]), now=NOW)
    assert result.tasks[0].rows == 120 and payloads(db) == {"new": 30}


def test_the_cutoff_follows_now(db):
    seed(db, old=50, new=20)
    # 50 days on, every row is older than 30 days
    result = run_maintenance(make_spec(purge=[PURGE]), now=NOW + 50 * DAY)
    assert result.tasks[0].rows == 70 and payloads(db) == {}


def test_a_schema_qualified_table(db):
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA archive")
    seed(db, old=10, new=5, table="archive.events")
    result = run_maintenance(make_spec(purge=[{**PURGE, "table": "archive.events"}]), now=NOW)
    assert result.tasks[0].status == "ok", result.tasks[0].reason
    assert result.tasks[0].tables == ("archive.events",)
    assert payloads(db, "archive.events") == {"new": 5}


@pytest.mark.parametrize("purge,reason", [
    ({**PURGE, "table": "nosuch"}, "no table nosuch in this database"),
    ({**PURGE, "table": "Events"}, "no table Events in this database"),
    ({**PURGE, "column": "payload"}, "column public.events.payload is of type text; a purge "
                                     "needs a date, timestamp or timestamptz column"),
    ({**PURGE, "column": "nosuch"}, "table public.events has no column nosuch"),
    ({**PURGE, "table": "events_view"}, "events_view is a view, not a table"),
])
def test_a_purge_that_cannot_run_fails_with_the_reason_and_the_others_go_on(db, purge, reason):
    seed(db, old=10, new=5)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE VIEW events_view AS SELECT * FROM events")
    result = run_maintenance(make_spec(purge=[purge, {**PURGE, "older_than": "1s"}]), now=NOW)
    bad, good = result.tasks
    assert bad.status == "failed" and bad.reason.startswith(reason) and bad.rows == 0
    assert good.status == "ok" and good.rows == 15
    assert not result.ok
    assert f"purge {purge['table']}: {reason}" in result.summary()


def test_a_purge_stops_at_the_run_timeout_and_reports_what_it_deleted(db):
    seed(db, old=400, new=5)
    with psycopg.connect(db, autocommit=True) as conn:  # each batch takes 0.3 s
        conn.execute("CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ "
                     "BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$")
        conn.execute("CREATE TRIGGER slow BEFORE DELETE ON events FOR EACH STATEMENT "
                     "EXECUTE FUNCTION slow()")
    spec = make_spec(purge=[{**PURGE, "batch": 10}], vacuum={"tables": ["events"]},
                     timeout="1s")
    started = time.monotonic()
    result = run_maintenance(spec, now=NOW)
    took = time.monotonic() - started
    purge, vacuum = result.tasks
    assert purge.status == "failed" and not result.ok
    assert "the run's timeout (1s)" in purge.reason
    left = payloads(db)
    assert 0 < purge.rows < 400 and purge.rows == 400 - left["old"], (purge, left)
    assert purge.batches == purge.rows // 10 and transactions(db) == [10] * purge.batches
    assert vacuum.status == "skipped"
    assert vacuum.reason == "the run's timeout (1s) was reached before it started"
    assert took < 3.0


def test_a_batch_past_its_statement_timeout_fails_and_keeps_the_earlier_batches(db):
    seed(db, old=30, new=5)
    with psycopg.connect(db, autocommit=True) as conn:  # the third batch hangs
        conn.execute("CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                     "IF (SELECT count(*) FROM deleted_in) >= 20 THEN PERFORM pg_sleep(5); "
                     "END IF; RETURN NULL; END $$")
        conn.execute("CREATE TRIGGER slow BEFORE DELETE ON events FOR EACH STATEMENT "
                     "EXECUTE FUNCTION slow()")
    spec = make_spec(purge=[{**PURGE, "batch": 10, "statement_timeout": "500ms"}])
    (task,) = run_maintenance(spec, now=NOW).tasks
    assert task.status == "failed"
    assert "canceling statement due to statement timeout" in task.reason
    assert "(after deleting 20 rows in 2 batches)" in task.reason
    assert (task.rows, task.batches) == (20, 2)
    assert payloads(db) == {"old": 10, "new": 5}


def test_check_mode_cannot_write_even_by_mistake(db):
    """The dry run's session is read-only: the database itself refuses a write."""
    from agent.dbmaint import connect

    seed(db, old=5, new=5)
    conn = connect(make_spec(purge=[PURGE]).postgres, read_only=True)
    try:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.conn.execute("DELETE FROM events")
    finally:
        conn.close()
    assert payloads(db) == {"old": 5, "new": 5}
