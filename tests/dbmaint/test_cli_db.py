"""`opsagent db maintain|report` end to end: real playbooks, real database, exit codes, JSON."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import psycopg

from tests.dbmaint.conftest import DSN_ENV, one
from tests.harness.collector import free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]

PLAYBOOK = """\
name: db-host
maintenance:
  - {name: patching, from: "2020-01-01T00:00:00Z", until: "2020-01-02T00:00:00Z", rules: []}
db_maintenance:
  - name: app-db
    postgres: {dsn_env: DBMAINT_TEST_DSN}
    schedule: "30 3 * * *"
    purge:
      - {table: events, column: created_at, older_than: 30d, batch: 25}
    vacuum: {tables: [events]}
    reindex: {tables: [events], window: patching}
    report: {slow_queries: 5}
"""


def opsagent(*args, dsn=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop(DSN_ENV, None)
    if dsn is not None:
        env[DSN_ENV] = dsn
    return subprocess.run([sys.executable, "-m", "agent.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env)


def playbook(tmp_path, text=PLAYBOOK):
    path = tmp_path / "db.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def seed(url):
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id int PRIMARY KEY, created_at timestamptz)")
        conn.execute("CREATE INDEX events_unused ON events (created_at)")
        conn.execute("INSERT INTO events SELECT i, now() - i * interval '1 day' "
                     "FROM generate_series(1, 100) i")  # 71 rows are 30 days old or more


def count(url):
    return one(url, "SELECT count(*) FROM events")


def test_maintain_check_then_for_real_with_json(db, tmp_path):
    seed(db)
    pb = playbook(tmp_path)
    res = opsagent("db", "maintain", "app-db", "-p", pb, "--check", "--json", dsn=db)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert (doc["name"], doc["check"], doc["ok"], doc["rows_purged"]) == ("app-db", True, True, 71)
    tasks = {t["task"]: t for t in doc["tasks"]}
    assert list(tasks) == ["purge events", "vacuum", "reindex", "report"]
    assert (tasks["purge events"]["rows"], tasks["purge events"]["batches"]) == (71, 3)
    assert tasks["vacuum"]["reason"] == "would VACUUM (ANALYZE) public.events"
    assert tasks["reindex"] == {**tasks["reindex"], "status": "skipped",
                                "reason": "maintenance window patching is not open"}
    assert doc["report"]["unused_indexes"][0]["index"] == "public.events_unused"
    assert db.split("@")[1].split("/")[0] in doc["target"]
    assert count(db) == 100

    res = opsagent("db", "maintain", "app-db", "-p", pb, "--json", dsn=db)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert (doc["check"], doc["ok"], doc["rows_purged"]) == (False, True, 71)
    assert [t["status"] for t in doc["tasks"]] == ["ok", "ok", "skipped", "ok"]
    assert doc["tasks"][0]["batches"] == 3
    assert count(db) == 29


def test_maintain_text_output(db, tmp_path):
    seed(db)
    res = opsagent("db", "maintain", "app-db", "-p", playbook(tmp_path), dsn=db)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("app-db: postgres 127.0.0.1:")
    assert any(line.split()[:3] == ["purge", "events", "ok"] and "deleted 71 rows" in line
               for line in lines), res.stdout
    assert any(line.split()[:2] == ["reindex", "skipped"] for line in lines), res.stdout
    assert "slowest queries: pg_stat_statements is not installed" in res.stdout
    assert "public.events_unused on public.events" in res.stdout
    assert lines[-1].startswith("purged 71 rows in ")


def test_a_failed_task_exits_4(db, tmp_path):
    seed(db)
    pb = playbook(tmp_path, PLAYBOOK.replace("vacuum: {tables: [events]}",
                                             "vacuum: {tables: [nosuch]}"))
    res = opsagent("db", "maintain", "app-db", "-p", pb, "--json", dsn=db)
    assert res.returncode == 4, res.stderr
    doc = json.loads(res.stdout)
    assert doc["ok"] is False
    assert [t["status"] for t in doc["tasks"]] == ["ok", "failed", "skipped", "ok"]
    assert count(db) == 29


def test_an_unreachable_database_exits_4_and_never_shows_the_password(tmp_path):
    dsn = f"postgresql://app:s3cret-pw@127.0.0.1:{free_port()}/app"
    pb = playbook(tmp_path)
    res = opsagent("db", "maintain", "app-db", "-p", pb, "--json", dsn=dsn)
    assert res.returncode == 4
    (task,) = json.loads(res.stdout)["tasks"]
    assert task["task"] == "connect" and task["status"] == "failed"
    assert "s3cret-pw" not in res.stdout + res.stderr
    res = opsagent("db", "report", "app-db", "-p", pb, dsn=dsn)
    assert res.returncode == 4 and "s3cret-pw" not in res.stdout + res.stderr
    assert res.stdout.startswith("app-db: postgres 127.0.0.1:")
    res = opsagent("db", "report", "app-db", "-p", pb, "--json")  # no DSN at all
    assert res.returncode == 4
    assert json.loads(res.stdout) == {
        "name": "app-db", "error": f"environment variable {DSN_ENV} (dsn_env) is not set"}


def test_report_json(db, tmp_path):
    seed(db)
    res = opsagent("db", "report", "app-db", "-p", playbook(tmp_path), "--json", dsn=db)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["name"] == "app-db"
    assert [ix["index"] for ix in doc["unused_indexes"]] == ["public.events_unused"]
    assert doc["tables"][0]["table"] == "public.events"
    assert doc["slow_queries"] is None and "not installed" in doc["slow_queries_note"]
    assert count(db) == 100, "a report changes nothing"


def test_bad_input_exits_2(tmp_path):
    pb = playbook(tmp_path, PLAYBOOK.replace("table: events,", "table: 'events; DROP TABLE x',"))
    res = opsagent("db", "maintain", "app-db", "-p", pb)
    assert res.returncode == 2
    assert f"{pb}:9:" in res.stderr and "db_maintenance[0].purge[0].table" in res.stderr
    assert "Traceback" not in res.stderr

    res = opsagent("db", "maintain", "app-dv", "-p", playbook(tmp_path))
    assert res.returncode == 2
    assert "no db_maintenance entry named 'app-dv' (did you mean 'app-db'?)" in res.stderr

    res = opsagent("db", "report", "app-db", "-p", tmp_path / "missing.yaml")
    assert res.returncode == 2 and "Traceback" not in res.stderr

    res = opsagent("db", "maintain", "app-db")
    assert res.returncode == 2 and "-p/--playbook" in res.stderr


def test_the_same_name_in_two_playbooks_is_ambiguous(tmp_path):
    (tmp_path / "a").mkdir()
    playbook(tmp_path / "a")
    (tmp_path / "a" / "other.yaml").write_text(PLAYBOOK.replace("name: db-host", "name: two"))
    res = opsagent("db", "report", "app-db", "-p", tmp_path / "a")
    assert res.returncode == 2
    assert "2 playbooks declare db_maintenance 'app-db'" in res.stderr
