"""The outbox's cap and the sender's handling of refusals, against a real collector."""

from __future__ import annotations

import json
import sqlite3

from agent.report.outbox import Outbox
from agent.report.sender import Sender
from tests.harness.reports import alert_report, revision_report, run_report


def test_over_its_cap_the_outbox_drops_plain_runs_first_and_reports_the_drop(tmp_path):
    box = Outbox(str(tmp_path), "web01", "test", cap_bytes=20_000)
    plain = [run_report("web01") for _ in range(100)]
    alerts = [alert_report("web01") for _ in range(5)]
    box.put_many(alerts[:2])
    for r in plain:
        box.put(r)
    box.put_many(alerts[2:])
    st = box.stats()
    assert st["bytes"] <= 20_000 + 2_000 and st["dropped_total"] > 0
    bodies = [json.loads(b) for _, b in box.peek(1000, 1 << 30)]
    kept = {b["id"] for b in bodies}
    assert {a.id for a in alerts} <= kept  # critical reports survive
    drops = [b for b in bodies if b["type"] == "dropped"]
    assert drops and sum(d["dropped"]["count"] for d in drops) == st["dropped_total"]
    assert all(set(d["dropped"]["by_type"]) == {"run"} for d in drops)
    assert len(kept & {r.id for r in plain}) == 100 - st["dropped_total"]
    # the newest plain runs are the ones kept
    assert plain[-1].id in kept and plain[0].id not in kept
    assert Outbox(str(tmp_path), "web01", "test").stats()["depth"] == st["depth"]  # durable


def test_a_report_the_collector_refuses_is_parked_and_the_rest_delivered(tmp_path, collector):
    box = Outbox(str(tmp_path / "state"), "web01", "test")
    good = [run_report("web01") for _ in range(20)]
    box.put_many(good[:10])
    bad = alert_report("web01")
    box.put(bad)
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:  # e.g. a newer field
        body = json.loads(bad.model_dump_json())
        body["alert"]["from_the_future"] = 1
        conn.execute("UPDATE outbox SET body = ? WHERE id = ?",
                     (json.dumps(body).encode(), bad.id))
    box.put_many(good[10:])
    token = tmp_path / "token"
    token.write_text(collector.token("web01"))
    sender = Sender(box, collector.url, str(token), batch_size=8)
    assert sender.flush(30), sender.state()
    assert {r["id"] for r in collector.stored()} == {r.id for r in good}
    (parked,) = box.parked()
    assert parked["id"] == bad.id and parked["reason"].startswith("422")
    assert "from_the_future" in parked["reason"]
    assert box.stats()["parked"] == 1


def test_a_wrong_token_backs_off_and_a_rotated_one_is_picked_up(tmp_path, collector):
    box = Outbox(str(tmp_path / "state"), "web01", "test")
    box.put_many([run_report("web01") for _ in range(3)])
    token = tmp_path / "token"
    token.write_text("oat_wrong")
    sender = Sender(box, collector.url, str(token), backoff_first=0.05, backoff_cap=0.2)
    sender.start()
    try:
        assert not sender.flush(1.0)
        st = sender.state()
        assert st["consecutive_failures"] >= 1 and "401" in st["last_error"]
        assert st["depth"] == 3
        token.write_text(collector.token("web01") + "\n")  # rotated by the operator
        assert sender.flush(10), sender.state()
    finally:
        sender.stop()
    assert len(collector.stored()) == 3 and sender.state()["last_error"] is None


def test_a_missing_token_file_is_an_error_not_a_crash(tmp_path, collector):
    box = Outbox(str(tmp_path / "state"), "web01", "test")
    box.put(run_report("web01"))
    sender = Sender(box, collector.url, str(tmp_path / "nope"), backoff_first=0.05)
    assert not sender.flush(0.5)
    assert "cannot read the token file" in sender.state()["last_error"]


# --- the outbox on its own --------------------------------------------------------------


def db_total(state_dir) -> tuple[int, int]:
    """(rows, SUM(size)) read straight from state.db, to check the running total against."""
    with sqlite3.connect(state_dir / "state.db") as conn:
        n, size = conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
    return n, size


def changed_run(host: str):
    return run_report(host, [("files", "/etc/app.conf", "changed", "corrective")])


def test_reports_survive_a_new_outbox_and_leave_oldest_first_as_they_are_acked(tmp_path):
    box = Outbox(str(tmp_path), "web01", "test")
    reports = [run_report("web01"), alert_report("web01"), revision_report("web01"),
               changed_run("web01"), run_report("web01")]
    for r in reports:
        box.put(r)
    again = Outbox(str(tmp_path), "web01", "test")  # a restart, or the operator's CLI
    batch = again.peek(100, 1 << 30)
    assert [json.loads(b)["id"] for _, b in batch] == [r.id for r in reports]
    assert [s for s, _ in batch] == sorted(s for s, _ in batch)
    assert [b for _, b in batch] == [r.model_dump_json().encode() for r in reports]
    first = again.peek(2, 1 << 30)
    assert first == batch[:2]
    again.ack([s for s, _ in first])
    assert again.peek(100, 1 << 30) == batch[2:]
    st = again.stats()
    assert st["depth"] == 3 and st["bytes"] == sum(len(b) for _, b in batch[2:])
    assert st["dropped_total"] == 0 and st["parked"] == 0
    assert isinstance(st["oldest"], float)
    again.ack([s for s, _ in batch])  # acking what is already gone is harmless
    assert box.stats() == {"depth": 0, "bytes": 0, "oldest": None, "dropped_total": 0,
                           "parked": 0}


def test_peek_keeps_to_max_bytes_but_always_gives_one(tmp_path):
    box = Outbox(str(tmp_path), "web01", "test")
    reports = [run_report("web01") for _ in range(4)]
    box.put_many(reports)
    size = len(reports[0].model_dump_json())
    assert len(box.peek(10, 1)) == 1  # one report alone over max_bytes still goes
    assert len(box.peek(10, 2 * size)) == 2
    assert len(box.peek(10, 2 * size - 1)) == 1
    assert len(box.peek(3, 1 << 30)) == 3


def test_reading_an_outbox_that_was_never_written_creates_nothing(tmp_path):
    box = Outbox(str(tmp_path / "state"), "web01", "test")
    assert box.peek(10, 1 << 20) == []
    assert box.stats()["depth"] == 0 and box.parked() == []
    assert not (tmp_path / "state").exists()


def test_a_report_put_twice_is_kept_once(tmp_path):
    box = Outbox(str(tmp_path), "web01", "test")
    r = alert_report("web01")
    box.put(r)
    box.put_many([r, r])
    assert box.stats()["depth"] == 1
    assert box.stats()["bytes"] == len(r.model_dump_json()) == db_total(tmp_path)[1]


def test_critical_reports_go_only_when_no_plain_run_is_left(tmp_path):
    one = len(alert_report("web01").model_dump_json())
    box = Outbox(str(tmp_path), "web01", "test", cap_bytes=10 * one)
    plain = [run_report("web01") for _ in range(3)]
    changed = [changed_run("web01") for _ in range(2)]
    alerts = [alert_report("web01") for _ in range(12)]
    box.put_many(plain + changed)
    box.put_many(alerts)
    kept = [json.loads(b) for _, b in box.peek(1000, 1 << 30)]
    ids = [r["id"] for r in kept]
    assert not set(ids) & {r.id for r in plain}  # all plain runs went first
    assert not set(ids) & {r.id for r in changed}  # then the oldest critical ones
    (note,) = [r for r in kept if r["type"] == "dropped"]
    d = note["dropped"]
    assert d["by_type"]["run"] == 5  # 3 plain, then 2 with changes
    lost = d["by_type"]["alert"]  # and then, still over the cap, the oldest alerts
    assert 1 <= lost < len(alerts)
    assert [i for i in ids if i != note["id"]] == [r.id for r in alerts[lost:]]
    assert d["count"] == box.stats()["dropped_total"] == sum(d["by_type"].values())
    assert d["bytes"] > 0 and d["oldest"] <= d["newest"]
    assert "over its cap of" in d["reason"]
    assert box.stats()["bytes"] == db_total(tmp_path)[1]


def test_one_drop_notice_is_amended_until_a_sender_takes_it(tmp_path):
    size = len(run_report("web01").model_dump_json())
    box = Outbox(str(tmp_path), "web01", "test", cap_bytes=5 * size)
    box.put_many([alert_report("web01")] + [run_report("web01") for _ in range(8)])
    for _ in range(5):
        box.put(run_report("web01"))

    def notices() -> list[dict]:
        return [json.loads(b) for _, b in box.peek(1000, 1 << 30)
                if json.loads(b)["type"] == "dropped"]

    (first,) = notices()  # peeking everything hands the notice to a sender: frozen
    assert first["dropped"]["count"] == box.stats()["dropped_total"] > 5
    other = Outbox(str(tmp_path), "web01", "test", cap_bytes=5 * size)  # another process
    for _ in range(3):
        other.put(run_report("web01"))
    old, new = notices()
    assert old == first  # what the sender took is not changed under it
    assert old["id"] != new["id"]
    assert old["dropped"]["count"] + new["dropped"]["count"] == box.stats()["dropped_total"]
    assert box.stats()["bytes"] == db_total(tmp_path)[1]


def test_the_running_total_follows_puts_acks_parks_and_drops(tmp_path):
    size = len(run_report("web01").model_dump_json())
    box = Outbox(str(tmp_path), "web01", "test", cap_bytes=30 * size)
    for i in range(60):
        box.put(changed_run("web01") if i % 7 == 0 else run_report("web01"))
        if i % 10 == 9:
            batch = box.peek(4, 1 << 30)
            box.ack([s for s, _ in batch[:3]])
            box.park(batch[3][0], "422: test")
        assert box.stats()["bytes"] == db_total(tmp_path)[1]
    assert box.stats()["parked"] == 6 and box.stats()["dropped_total"] > 0
    with sqlite3.connect(tmp_path / "state.db") as conn:  # a database from before the total
        conn.execute("DELETE FROM outbox_meta WHERE key = 'bytes'")
    assert box.stats()["bytes"] == db_total(tmp_path)[1]
    box.put(run_report("web01"))
    assert box.stats()["bytes"] == db_total(tmp_path)[1]
