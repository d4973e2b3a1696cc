"""PostgreSQL backups on a real server: dump, drop, restore, compare; verify by restoring;
refusing to overwrite; a backup killed mid-dump leaves nothing that looks like a backup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import psutil
import psycopg
import pytest

from agent.backups import RestoreRefused
from agent.backups.restore import restore
from agent.backups.run import list_backups, run_backup
from agent.backups.sources import server_of
from agent.backups.verify import SCRATCH_PREFIX, verify_run
from tests.backups.specs import (
    backup_spec,
    drop_database,
    fingerprint,
    role_password,
    seed,
    write_playbook,
)

pytestmark = pytest.mark.e2e
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def seeded(postgres, monkeypatch):
    """(database name, its URL, the role owning a table); OPSAGENT_TEST_DSN points at the server."""
    url = postgres.new_database()
    role = "r" + uuid.uuid4().hex[:10]
    seed(url, role)
    monkeypatch.setenv("OPSAGENT_TEST_DSN", postgres.url())
    return url.rsplit("/", 1)[1], url, role


def pg_source(db, **kw):
    return {"postgres": {"dsn_env": "OPSAGENT_TEST_DSN", "databases": [db], **kw}}


def scratch_databases(postgres):
    with psycopg.connect(postgres.url()) as c:
        return [r[0] for r in c.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                        (SCRATCH_PREFIX + "%",))]


def test_dump_drop_restore_gives_back_rows_sequences_owners_grants_and_the_role(
        postgres, seeded, tmp_path):
    db, url, role = seeded
    before, password = fingerprint(url), role_password(url, role)
    spec = backup_spec(tmp_path, pg_source(db))

    res = run_backup(spec)

    assert res.ok, res.error
    assert [a.kind for a in res.artefacts] == ["pg_dumpall", "pg_dump"]
    assert res.artefacts[1].meta["database"] == db and res.bytes_raw > 500_000
    run = list_backups(spec)[-1]
    assert run.tools["pg_dump"].startswith("pg_dump (PostgreSQL) 15")
    assert run.tools["postgresql"].startswith("15")
    drop_database(postgres.url(), db, role)

    plan = restore(spec)  # yes=False: a plan only
    assert not plan.applied and any(f"create database {db}" in s for s in plan.steps)
    assert any(role in s for s in plan.steps if s.startswith("roles: create"))
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url).close()  # the plan changed nothing

    done = restore(spec, yes=True)

    assert done.applied and done.warnings == []
    assert fingerprint(url) == before
    assert role_password(url, role) == password  # the role is back, with its password


def test_verify_restores_the_dump_into_a_scratch_database_and_queries_it(
        postgres, seeded, tmp_path):
    db, url, _ = seeded
    good = backup_spec(tmp_path, pg_source(db), verify={
        "restore": True, "query": "SELECT count(*) FROM orders WHERE note IS NULL"})
    res = run_backup(good)
    assert res.ok and res.verified is True, res.error
    assert res.verify.query_result == [[857]]  # 6000 orders, every 7th without a note
    assert res.verify.restored == db
    assert list_backups(good)[-1].verified is True
    assert scratch_databases(postgres) == []

    for query, why in (("SELECT count(*) FROM no_such_table", "no_such_table"),
                       ("SELECT count(*) > 100000 FROM orders", "returned False"),
                       ("SELECT 1 WHERE false", "no row")):
        spec = backup_spec(tmp_path, pg_source(db),
                           verify={"restore": True, "query": query})
        out = verify_run(spec)
        assert not out.ok and why in out.error, out.error
        assert scratch_databases(postgres) == []  # dropped even when the query failed
        assert list_backups(spec)[-1].verified is False


def test_restore_refuses_a_database_that_holds_data_unless_forced(postgres, seeded, tmp_path):
    db, url, _ = seeded
    before = fingerprint(url)
    spec = backup_spec(tmp_path, pg_source(db))
    assert run_backup(spec).ok
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("DELETE FROM orders WHERE id % 2 = 0")
        c.execute("CREATE TABLE added_later (x int)")
    changed = fingerprint(url)

    with pytest.raises(RestoreRefused, match=r"holds \d+ relations.*--force"):
        restore(spec, yes=True)
    assert fingerprint(url) == changed

    with psycopg.connect(url) as live:  # a client still connected is ended by --force
        restore(spec, yes=True, force=True)
        with pytest.raises(psycopg.OperationalError):
            live.execute("SELECT 1")
    assert fingerprint(url) == before

    copy = db + "_copy"  # beside it, under another name, then refused there too
    restore(spec, to=copy, yes=True)
    assert fingerprint(postgres.url(copy)) == before
    with pytest.raises(RestoreRefused):
        restore(spec, to=copy)


def test_secrets_stay_out_of_argv_and_messages(postgres, seeded, tmp_path, monkeypatch):
    server = server_of("postgresql://backup:s3cr3t-pw@127.0.0.1:1/app?sslmode=disable")
    assert "s3cr3t" not in server.dbname_arg("app")
    env = server.env()
    assert env["PGPASSWORD"] == "s3cr3t-pw" and env["PGPORT"] == "1"
    assert env["PGSSLMODE"] == "disable"
    monkeypatch.setenv("OPSAGENT_TEST_DSN",
                       f"postgresql://postgres:s3cr3t-pw@127.0.0.1:{postgres.port}/nosuchdb")
    res = run_backup(backup_spec(tmp_path, pg_source("x")))
    assert not res.ok and "nosuchdb" in res.error and "s3cr3t" not in res.error
    monkeypatch.setenv("OPSAGENT_TEST_DSN", f"postgresql://u:s3cr3t-pw@127.0.0.1:{postgres.port}"
                       "/postgres?keepalives=1&sslpassword=x")
    res = run_backup(backup_spec(tmp_path, pg_source("x")))
    assert "sslpassword cannot be passed" in res.error and "s3cr3t" not in res.error


def test_a_backup_killed_mid_dump_leaves_no_backup_and_the_next_run_succeeds(
        postgres, tmp_path, monkeypatch):
    url = postgres.new_database()
    db = url.rsplit("/", 1)[1]
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CREATE TABLE big AS SELECT i, md5(i::text) || md5((i * 3)::text) || "
                  "md5((i * 7)::text) AS v FROM generate_series(1, 1500000) i")
    monkeypatch.setenv("OPSAGENT_TEST_DSN", postgres.url())
    book = write_playbook(tmp_path / "pb.yaml", {
        "name": "big", "schedule": "0 2 * * *", "source": pg_source(db),
        "destination": str(tmp_path / "dest")})
    spec = backup_spec(tmp_path / "dest", pg_source(db), name="big")
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "backup", "run", "big",
                             "-p", str(book)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    bdir = tmp_path / "dest" / "big"
    deadline = time.monotonic() + 60
    dump = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(bdir.glob(".tmp-*/db-*.dump.zst"))
        if found and found[0].stat().st_size > 1 << 20:
            dump = found[0]
            break
        time.sleep(0.005)
    assert dump is not None, proc.communicate()
    dumpers = [p for p in psutil.Process(proc.pid).children() if p.name() == "pg_dump"]
    assert dumpers, "pg_dump was not streaming when the backup was killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(dumpers, timeout=30)  # pg_dump ends on its own (SIGPIPE)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in dumpers)

    assert list_backups(spec) == []
    assert [p.name for p in bdir.iterdir() if p.name.startswith(".tmp-")]  # the half run

    res = run_backup(spec)

    assert res.ok, res.error
    assert [r.run_id for r in list_backups(spec)] == [res.run_id]
    assert not [p for p in bdir.iterdir() if p.name.startswith(".tmp-")]
    assert verify_run(spec).ok


def test_a_backup_role_that_is_not_superuser_dumps_without_role_passwords(
        postgres, seeded, tmp_path, monkeypatch):
    db, url, _ = seeded
    user = "backup_" + uuid.uuid4().hex[:8]
    with psycopg.connect(postgres.url(), autocommit=True) as c:
        c.execute(f"CREATE ROLE {user} LOGIN IN ROLE pg_read_all_data")
    monkeypatch.setenv("OPSAGENT_TEST_DSN",
                       f"postgresql://{user}:unused@127.0.0.1:{postgres.port}/postgres")
    spec = backup_spec(tmp_path, pg_source(db))
    res = run_backup(spec)
    assert res.ok, res.error
    assert res.artefacts[0].meta == {"role_passwords": False}
    # the dump is whole: restored beside the original it matches it
    monkeypatch.setenv("OPSAGENT_TEST_DSN", postgres.url())
    restore(spec, to=db + "_nonsuper", yes=True)
    assert fingerprint(postgres.url(db + "_nonsuper")) == fingerprint(url)
