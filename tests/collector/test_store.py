"""The collector's storage, the same tests on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from agent.collector import db
from agent.collector.store import Store, StoreError
from agent.report.document import FleetShare, ResponseDoc, ResponseReport, SharedBlock
from tests.harness.reports import alert_report, revision_report, run_report


def test_a_batch_sent_twice_is_stored_once(store):
    batch = [run_report("web01", [("files", "/etc/a", "changed", "corrective")]),
             alert_report("web01"), revision_report("web01", "rev2", "rev1")]
    assert store.ingest("web01", batch) == (3, 0)
    assert store.ingest("web01", batch) == (0, 3)
    assert store.ingest("web01", [batch[0], batch[0]]) == (0, 2)
    assert store.counts() == {"hosts": 1, "reports": 3, "alerts": 1}
    assert len(store.timeline("web01")) == 1  # changes fanned out once, not per attempt
    (host,) = store.hosts(stale_after=300)
    assert host["revision"] == "rev2" and host["drift_24h"] == 1


def test_shared_blocks_are_stored_once_in_the_order_they_end(store):
    now = time.time()
    blocks = [SharedBlock(addr=f"203.0.113.{i}", until=now + 600 - i * 100) for i in range(3)]
    r = ResponseReport(host="web01", agent_version="test", response=ResponseDoc(
        watch="ssh", playbook="web", key="203.0.113.0", matches=5, within_s=60,
        fleet=FleetShare(group="web", blocks=blocks)))
    assert store.ingest("web01", [r]) == (1, 0)
    assert store.ingest("web01", [r]) == (0, 1)
    got = store.fleet_blocks("web", 0, "db01")
    assert [b["addr"] for b in got] == ["203.0.113.2", "203.0.113.1", "203.0.113.0"]
    assert [b["seq"] for b in got] == sorted(b["seq"] for b in got)
    assert store.fleet_blocks("web", 0, "web01")[0]["skip"]  # its own, not sent back


def test_a_report_twice_in_one_batch_counts_as_a_duplicate(store):
    r = run_report("web01", [("files", "/etc/a", "changed", "corrective")])
    assert store.ingest("web01", [r, r]) == (1, 1)
    assert len(store.timeline("web01")) == 1


def test_latest_status_failing_drift_and_recurring_drift(store):
    now = time.time()
    for i in range(3):  # the same file repaired three times within the hour
        store.ingest("web01", [run_report("web01", [
            ("files", "/etc/app.conf", "changed", "corrective"),
            ("services", "nginx", "ok", None)], at=now - 600 + i)])
    store.ingest("web01", [run_report("web01", [("services", "nginx", "failed", "failed")],
                                      at=now - 10)])
    store.ingest("db01", [run_report("db01", [("files", "/etc/pg.conf", "changed",
                                                "intentional")], at=now - 5)])
    # an older report arriving late does not overwrite the latest status
    store.ingest("web01", [run_report("web01", [("services", "nginx", "ok", None)],
                                      at=now - 3600)])
    host = store.host("web01", stale_after=300)
    assert host is not None
    status = {(r["kind"], r["name"]): r["status"] for r in host["resources"]}
    assert status == {("files", "/etc/app.conf"): "changed", ("services", "nginx"): "failed"}
    assert host["failing"] == 1 and host["drift_24h"] == 3
    assert [(r["kind"], r["name"], r["count"]) for r in host["recurring"]] == [
        ("files", "/etc/app.conf", 3)]
    fleet = {h["name"]: h for h in store.hosts(stale_after=300)}
    assert fleet["web01"]["recurring_drift"] == 1 and fleet["web01"]["failing"] == 1
    assert fleet["db01"]["recurring_drift"] == 0 and fleet["db01"]["drift_24h"] == 0
    labels = [t["label"] for t in store.timeline("web01")]
    assert labels.count("corrective") == 3 and labels.count("failed") == 1


def test_a_silent_host_is_stale(store):
    store.ingest("web01", [run_report("web01")])
    assert not store.hosts(stale_after=300)[0]["stale"]
    assert store.hosts(stale_after=300, now=time.time() + 301)[0]["stale"]


def test_tokens_are_stored_hashed_and_revocable(store):
    token = store.add_token("web01")
    assert store.host_of_token(token) == "web01"
    assert store.host_of_token(token + "x") is None
    with store.engine.connect() as conn:
        stored = conn.execute(sa.select(db.tokens.c.hash)).scalars().all()
    assert token not in stored and len(stored[0]) == 64
    assert store.revoke_tokens("web01") == 1
    assert store.host_of_token(token) is None
    with pytest.raises(StoreError):
        store.add_token("web01'; DROP TABLE tokens; --")


def test_hostile_names_are_data(store):
    evil = ["'; DROP TABLE reports; --", "<script>alert(1)</script>", "x\" OR 1=1 --", "ü∂\\"]
    store.ingest("web01", [run_report("web01", [("files", n, "changed", "corrective")
                                                for n in evil])])
    host = store.host("web01", stale_after=300)
    assert host is not None
    assert sorted(r["name"] for r in host["resources"]) == sorted(evil)
    assert store.counts()["reports"] == 1
    assert store.host("web01' OR '1'='1", stale_after=300) is None


def test_migrations_run_once_and_are_recorded(db_url):
    Store(db_url).close()
    s = Store(db_url)
    with s.engine.connect() as conn:
        versions = conn.execute(sa.select(db.migrations_table.c.version)).scalars().all()
    s.close()
    assert versions == [v for v, _ in db.MIGRATIONS]


def test_concurrent_overlapping_batches_are_stored_exactly_once(store):
    reports = [run_report("web01", [("files", f"/f{i}", "changed", "corrective")])
               for i in range(200)]
    results: list[tuple[int, int]] = []
    lock = threading.Lock()

    def sender(offset: int) -> None:
        for start in range(0, 200, 20):
            chunk = reports[(start + offset) % 200:(start + offset) % 200 + 20]
            got = store.ingest("web01", chunk)
            with lock:
                results.append(got)

    threads = [threading.Thread(target=sender, args=(k * 10,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(a for a, _ in results) == 200
    assert store.counts()["reports"] == 200
    assert len(store.timeline("web01", limit=1000)) == 200


def test_two_processes_migrating_a_fresh_sqlite_file_at_once_both_succeed(tmp_path):
    import subprocess
    import sys

    db_file = str(tmp_path / "race.db")
    code = ("import sys\nfrom agent.collector.store import Store\n"
            "Store(sys.argv[1]).close()\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, db_file], stderr=subprocess.PIPE)
             for _ in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()


def test_a_batch_that_fails_midway_stores_nothing_and_the_next_one_is_stored(store,
                                                                            monkeypatch):
    from agent.collector import rows

    real = rows.fan_out

    def broken(host, fresh, now):  # a NOT NULL column left empty: the fan-out fails
        out = real(host, fresh, now)
        out.changes[0]["kind"] = None
        return out

    batch = [run_report("web01", [("files", "/etc/a", "changed", "corrective")])]
    monkeypatch.setattr("agent.collector.store.fan_out", broken)
    with pytest.raises(sa.exc.IntegrityError):
        store.ingest("web01", batch)
    assert store.counts()["reports"] == 0
    monkeypatch.setattr("agent.collector.store.fan_out", real)
    for _ in range(20):  # every pooled connection is back in a usable, transactional state
        assert store.ingest("web01", batch) in ((1, 0), (0, 1))
    assert store.counts() == {"hosts": 1, "reports": 1, "alerts": 0}
    assert len(store.timeline("web01")) == 1


def test_a_connection_lost_between_batches_fails_one_batch_at_most(postgres):
    store = Store(postgres.new_database())
    try:
        threads = [threading.Thread(target=store.ingest, args=("web01", [run_report("web01")]))
                   for _ in range(4)]  # several connections in the pool
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with store.engine.connect() as conn:  # what a database restart does to the pool
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE datname = current_database() "
                                 "AND pid <> pg_backend_pid()"))
        failed = 0
        for _ in range(4):
            try:
                store.ingest("web01", [run_report("web01")])
            except sa.exc.OperationalError:
                failed += 1
        assert failed <= 1 and store.counts()["reports"] == 8 - failed
    finally:
        store.close()


def test_a_worker_opens_its_database_sessions_before_the_first_request(postgres):
    store = Store(postgres.new_database())
    try:
        store.open_connections(4)
        assert store.engine.pool.checkedin() >= 4
        with store.engine.connect() as conn:
            sessions = conn.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            )).scalar_one()
        assert sessions >= 4
    finally:
        store.close()
