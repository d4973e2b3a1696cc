"""The outbox's cap and the sender's handling of refusals, against a real collector."""

from __future__ import annotations

import json
import sqlite3

from agent.report.outbox import Outbox
from agent.report.sender import Sender
from tests.harness.reports import alert_report, run_report


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
