"""Incident records: the local store in state.db, delivery to a real collector (and the
outbox keeping a record while the collector is down), the post-incident report, and
`opsagent incident list|show|report`."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import stat
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from agent.cli import main
from agent.errors import InternalError, UsageError
from agent.fleet import postmortem
from agent.fleet.incidents import (
    LOCAL,
    QUEUED,
    SENT,
    IncidentStore,
    new_incident_id,
    record_incident,
)
from agent.fleet.postmortem import render_markdown
from agent.report.document import IncidentDoc
from agent.report.outbox import Outbox
from agent.report.sender import Sender
from agent.service.config import AgentConfig
from tests.harness.collector import CollectorProc, free_port
from tests.harness.incidents import sample_incident

DAY2 = dt.datetime(2026, 11, 24, 10, 15, tzinfo=dt.UTC)


# --- the store --------------------------------------------------------------------------------

def test_new_ids_carry_the_utc_start_and_differ(monkeypatch):
    t = dt.datetime(2026, 11, 23, 9, 31, 12, tzinfo=dt.UTC).timestamp()
    ids = {new_incident_id(t) for _ in range(50)}
    assert all(re.fullmatch(r"INC-20261123-093112-[0-9a-f]{4}", i) for i in ids)
    assert len(ids) > 40  # 16 random bits
    local = dt.datetime(2026, 11, 23, 10, 31, 12, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert new_incident_id(local).startswith("INC-20261123-093112-")


def test_records_round_trip_replace_by_id_and_list_newest_first(tmp_path):
    state = tmp_path / "state"
    store = IncidentStore(str(state))
    assert store.list() == [] and store.get("INC") is None
    assert not state.exists()  # reading creates nothing
    first = sample_incident()
    first["status"] = "running"
    store.save(first)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "state.db").stat().st_mode) == 0o600
    assert store.get(first["id"]) == first
    final = sample_incident()
    store.save(final)  # the same id, finished: replaces the running version
    assert store.get(first["id"]) == final and len(store.list()) == 1
    later = sample_incident("INC-20261124-101500-aa01", started=DAY2)
    store.save(later)
    assert [d["id"] for d in store.list()] == [later["id"], first["id"]]
    assert [d["id"] for d in store.list(limit=1)] == [later["id"]]
    # another process sees the same rows
    assert IncidentStore(str(state)).get(later["id"]) == later


def test_an_id_may_be_given_by_a_unique_start(tmp_path):
    store = IncidentStore(str(tmp_path))
    store.save(sample_incident())
    store.save(sample_incident("INC-20261124-101500-aa01", started=DAY2))
    assert store.get("INC-20261123")["id"] == "INC-20261123-093112-3f2a"
    assert store.get("INC-20261124-1015")["id"] == "INC-20261124-101500-aa01"
    with pytest.raises(UsageError, match="start of several incident ids"):
        store.get("INC-2026112")
    assert store.get("INC-2027") is None
    assert store.get("%") is None and store.get("_") is None  # no LIKE patterns
    assert store.get("INC-20261123-093112-3f2a' OR '1'='1") is None


# --- delivery -------------------------------------------------------------------------------

def _config(tmp_path: Path, url: str, token: str | None) -> AgentConfig:
    token_file = tmp_path / "token"
    if token is not None:
        token_file.write_text(token + "\n")
    return AgentConfig.model_validate({
        "host": "ctl01", "state_dir": str(tmp_path / "state"),
        "collector": {"url": url, "token_file": str(token_file)}})


def test_a_record_is_delivered_once_and_its_newest_version_wins(tmp_path, collector):
    cfg = _config(tmp_path, collector.url, collector.token("ctl01"))
    doc = sample_incident()
    doc["status"], doc["finished_at"] = "running", None
    assert record_incident(doc, cfg.state_dir, cfg) == SENT
    (listed,) = collector.get("/api/v1/incidents")
    assert listed["status"] == "running" and listed["finished_at"] is None
    assert listed["controller"] == "ctl01" and listed["by"] == "alice@laptop"

    done = sample_incident()
    assert record_incident(done, cfg.state_dir, cfg) == SENT
    assert Outbox(cfg.state_dir, "ctl01", "test").stats()["depth"] == 0
    stored = [r for r in collector.stored("ctl01") if r["type"] == "incident"]
    assert len(stored) == 2  # one report per version, each stored once
    assert len({r["id"] for r in stored}) == 2
    (listed,) = collector.get("/api/v1/incidents")
    assert listed["status"] == "failed" and listed["duration_s"] == 60.0
    assert listed["hosts"] == {"total": 4, "ok": 1, "changed": 1, "failed": 1,
                               "unreachable": 1, "skipped": 0, "would_change": 0}
    detail = collector.get(f"/api/v1/incidents/{done['id']}")
    assert {k: detail[k] for k in done} == IncidentDoc.model_validate(done).model_dump()
    assert detail["controller"] == "ctl01"
    # a controller is not a managed host: it does not show up in the fleet
    assert collector.get("/api/v1/hosts") == []
    assert IncidentStore(cfg.state_dir).get(done["id"]) == done


def test_with_the_collector_down_the_record_waits_in_the_outbox(tmp_path):
    port = free_port()
    proc = CollectorProc(str(tmp_path / "c.db"), tmp_path / "c.log", port=port)
    token = proc.token("ctl01")  # the database exists; the server does not run yet
    cfg = _config(tmp_path, proc.url, token)
    doc = sample_incident()
    assert record_incident(doc, cfg.state_dir, cfg, flush_timeout=1.0) == QUEUED
    box = Outbox(cfg.state_dir, "ctl01", "test")
    (waiting,) = [json.loads(b) for _, b in box.peek(10, 1 << 20)]
    assert waiting["type"] == "incident" and waiting["host"] == "ctl01"
    assert waiting["incident"] == IncidentDoc.model_validate(doc).model_dump()
    assert IncidentStore(cfg.state_dir).get(doc["id"]) == doc  # kept locally regardless

    proc.start()
    try:
        sender = Sender(box, proc.url, cfg.collector.token_file)  # what `opsagent run` runs
        try:
            assert sender.flush(10.0)
        finally:
            sender.stop()
        assert box.stats()["depth"] == 0
        (listed,) = proc.get("/api/v1/incidents")
        assert listed["id"] == doc["id"]
        assert [r["incident"]["id"] for r in proc.stored("ctl01")] == [doc["id"]]
    finally:
        proc.stop()


def test_without_a_collector_the_record_is_only_kept_locally(tmp_path):
    state = str(tmp_path / "state")
    doc = sample_incident()
    assert record_incident(doc, state, None) == LOCAL
    cfg = AgentConfig.model_validate({"host": "ctl01", "state_dir": state})
    assert record_incident(doc, state, cfg) == LOCAL
    assert Outbox(state, "ctl01", "test").stats()["depth"] == 0  # nobody would send it
    assert IncidentStore(state).get(doc["id"]) == doc


def test_a_record_that_breaks_the_schema_is_kept_and_the_bug_is_loud(tmp_path):
    doc = sample_incident()
    doc["hosts"][0]["status"] = "pending"
    with pytest.raises(InternalError, match=r"saved locally.*hosts\.0\.status"):
        record_incident(doc, str(tmp_path), None)
    assert IncidentStore(str(tmp_path)).get(doc["id"]) == doc


# --- the post-incident report ---------------------------------------------------------------

def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def _rows(section: str) -> list[list[str]]:
    """The cells of every table row in ``section``, split on unescaped pipes."""
    out = []
    for line in section.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
            out.append([c.strip() for c in cells])
    return out


def test_the_report_has_the_sections_of_a_postmortem_in_order():
    text = render_markdown(sample_incident())
    assert text.startswith("# Incident INC-20261123-093112-3f2a: Block an abusive client and "
                           "restart nginx\n")
    heads = re.findall(r"^## (.+)$", text, re.M)
    assert heads == ["Summary", "Impact", "Timeline", "Actions taken", "Evidence",
                     "Follow-ups", "Root cause", "Lessons learned"]
    for title in ("Root cause", "Lessons learned"):
        assert _section(text, title).strip().endswith("_to be written_")
    summary = _section(text, "Summary")
    for line in ("- **Runbook:** web-abuse (`runbooks/web-abuse.yaml`, revision "
                 "`sha256:9f2c4e1d0b7a`)", "- **Operator:** alice@laptop",
                 "- **Started:** 2026-11-23 09:31:12 UTC",
                 "- **Finished:** 2026-11-23 09:32:12 UTC", "- **Duration:** 1 min 0 s",
                 "- **Status:** failed", "- **Dry run:** no",
                 "- **Inventory:** inventory.yaml, limited to web"):
        assert line in summary.splitlines(), line
    assert _rows(summary) == [["parameter", "value"], ["ip", "203.0.113.7"],
                              ["reason", "scraper \\| 20 req/s"], ["duration", "1h"],
                              ["notify", "true"]]


def test_impact_counts_hosts_and_lists_what_changed():
    impact = _section(render_markdown(sample_incident()), "Impact").splitlines()
    assert "- **Hosts targeted:** 4 (web01, web02, web03, web04)" in impact
    assert "- **Changed:** 1 (web01)" in impact
    assert "- **Failed:** 1 (web02)" in impact
    assert "- **Unreachable:** 1 (web04)" in impact
    assert "- **Already right (no change):** 1 (web03)" in impact
    changed = [line for line in impact if line.startswith("- web")]
    assert changed[0] == ("- web01: step 2 block the scraper (block_ip): changed — 203.0.113.7 "
                          "blocked until 2026-11-23 10:31:16 UTC")
    assert "- web02: step 2 block the scraper (block_ip): rolled-back — undone: unblocked " \
           "203.0.113.7" in changed
    assert len(changed) == 4


def test_the_timeline_merges_events_and_outcomes_in_time_order():
    rows = _rows(_section(render_markdown(sample_incident()), "Timeline"))
    assert rows[0] == ["time (UTC)", "event"]
    times = [r[0] for r in rows[1:]]
    assert times == sorted(times) and all(re.fullmatch(r"\d\d:\d\d:\d\d", t) for t in times)
    events = [r[1] for r in rows[1:]]
    assert events[0] == "runbook web-abuse started by alice@laptop"
    assert events[1] == "wave 1 of 2: web01"
    assert events[2] == "confirmed: Block 203.0.113.7 on every web host?"
    assert events[-2] == "stopped: 2 of 3 hosts failed (67% > max_fail_percentage 25%)"
    assert events[-1] == "run finished: failed"
    assert ("web02: step 3 restart nginx (restart): failed — nginx failed to start:<br>nginx: "
            "\\[emerg\\] bind() to 0.0.0.0:80 failed") in events
    assert len(rows) == 1 + 1 + 5 + 10 + 1  # start, events, outcomes, finish
    # a record whose own timeline marks its start and end gets no second marker
    doc = sample_incident()
    doc["timeline"][:0] = [{"at": doc["started_at"], "event": "started by alice@laptop"}]
    doc["timeline"].append({"at": doc["finished_at"], "event": "finished"})
    events = [r[1] for r in _rows(_section(render_markdown(doc), "Timeline"))[1:]]
    assert events[0] == "started by alice@laptop" and events[-1] == "finished"
    assert not [e for e in events if e.startswith(("runbook web-abuse", "run finished"))]


def test_actions_have_a_table_per_step_with_every_host():
    actions = _section(render_markdown(sample_incident()), "Actions taken")
    steps = re.findall(r"^### (.+)$", actions, re.M)
    assert steps == ["Step 1: evidence (`snapshot`)", "Step 2: block the scraper (`block_ip`)",
                     "Step 3: restart nginx (`restart`)"]
    third = actions[actions.index("### Step 3"):]
    assert _rows(third) == [
        ["host", "status", "message"],
        ["web01", "changed", "nginx restarted \\| active (running) since 09:31:17 (1.8 s)"],
        ["web02", "failed", "nginx failed to start:<br>nginx: \\[emerg\\] bind() to "
                            "0.0.0.0:80 failed (30.0 s)"],
        ["web03", "ok", "nginx is running (200 ms)"],
        ["web04", "not run", "unreachable: ssh: connect to 10.0.0.14:22: timed out"]]
    second = actions[actions.index("### Step 2"):actions.index("### Step 3")]
    assert ["web02", "rolled-back", "undone: unblocked 203.0.113.7 (100 ms)"] in _rows(second)


def test_the_markdown_renders_as_tables_with_the_cells_intact():
    doc = sample_incident()
    doc["outcomes"][2]["message"] = "a | b\\|c\n<script>alert(1)</script> *bold* [x](y)"
    html = MarkdownIt("commonmark").enable("table").render(render_markdown(doc))
    assert "<script>" not in html and "&lt;script&gt;" in html
    step3 = html[html.index("Step 3"):html.index("<h2>Evidence")]
    first = re.search(r"<tr>\s*<td>web01</td>\s*<td>changed</td>\s*<td>(.*?)</td>\s*</tr>",
                      step3, re.S)
    assert first is not None
    assert first.group(1) == ("a | b\\|c<br>&lt;script&gt;alert(1)&lt;/script&gt; *bold* "
                              "[x](y) (1.8 s)")
    assert step3.count("<tr>") == 5  # the header and four hosts: no row was split


def test_evidence_is_fenced_and_long_evidence_is_cut_with_a_note():
    doc = sample_incident()
    text = render_markdown(doc)
    evidence = _section(text, "Evidence")
    assert "### web01 · step 1: evidence" in evidence
    assert "**logs: /var/log/nginx/error.log**" in evidence
    assert "```text\nState  Recv-Q" in evidence and "limiting requests | excess" in evidence
    doc["outcomes"][0]["evidence"] = {
        "logs": {"app": "\n".join(f"line {i}" for i in range(5000))},
        "sockets": "``` a fence inside ````",
    }
    evidence = _section(render_markdown(doc), "Evidence")
    assert "line 119" in evidence and "line 120\n" not in evidence
    assert ("_Cut here: 4880 more lines; the whole evidence is in `opsagent incident show "
            "INC-20261123-093112-3f2a --json`._") in evidence
    assert "`````text\n``` a fence inside ````\n`````" in evidence
    one_line = {"sockets": "x" * 100_000}
    doc["outcomes"][0]["evidence"] = one_line
    evidence = _section(render_markdown(doc), "Evidence")
    assert len(evidence) < postmortem.EVIDENCE_CHARS + 1000 and "_Cut here: 1 more lines" in evidence


def test_follow_ups_add_failed_and_unreachable_hosts_live_blocks_and_rollbacks():
    items = [line[6:] for line in _section(render_markdown(sample_incident()),
                                            "Follow-ups").splitlines()
             if line.startswith("- [ ] ")]
    assert items[:2] == ["Rate-limit /api/search per client", "Review nginx worker_connections"]
    assert ("Investigate web02: step 3 restart nginx failed: nginx failed to start: nginx: "
            "\\[emerg\\] bind() to 0.0.0.0:80 failed") in items
    assert ("Investigate web04: it was unreachable (ssh: connect to 10.0.0.14:22: timed out); "
            "the runbook did not run there") in items
    blocks = [i for i in items if i.startswith("The block on")]
    assert blocks == ["The block on web01 (step 2: 203.0.113.7 blocked until 2026-11-23 "
                      "10:31:16 UTC) is temporary and expires on its own: decide whether it "
                      "should stay (a log watch or a permanent firewall rule)"]  # web02's undone
    assert ("web02 was rolled back (undone: step 2 block the scraper): find out why the run "
            "failed there before running the runbook on it again") in items
    assert len(items) == 6


def test_a_dry_run_says_so_and_what_would_change():
    doc = sample_incident(check=True)
    text = render_markdown(doc)
    assert "- **Dry run:** yes (--check): nothing was changed" in text
    assert "- **Status:** checked" in text
    impact = _section(text, "Impact")
    assert "### What would change" in impact and "- **Would change (dry run):** 1 (web01)" in impact
    items = _section(text, "Follow-ups")
    assert "- [ ] This was a dry run: run the runbook without --check to act" in items
    assert "The block on" not in items and "rolled back" not in items
    doc["outcomes"] = [o for o in doc["outcomes"] if o["status"] != "would-change"]
    assert "Nothing would change on any host." in render_markdown(doc)


def test_a_running_record_with_nothing_yet_still_renders():
    doc = sample_incident()
    doc.update(status="running", finished_at=None, hosts=[], outcomes=[], timeline=[],
               followups=[], params={})
    text = render_markdown(doc)
    assert "- **Duration:** still running" in text and "- **Finished:** —" in text
    assert "### Parameters\n\nNone." in text
    assert "No evidence was captured" in text and "## Follow-ups\n\nNone." in text


# --- the command line -----------------------------------------------------------------------

@pytest.fixture
def recorded(tmp_path):
    state = str(tmp_path / "state")
    store = IncidentStore(state)
    store.save(sample_incident())
    store.save(sample_incident("INC-20261124-101500-aa01", check=True, started=DAY2))
    return state


def test_cli_lists_newest_first(recorded, capsys):
    assert main(["incident", "list", "--state-dir", recorded]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("INC-20261124-101500-aa01  2026-11-24 10:15:00 UTC  checked "
                               "(dry run)")
    assert lines[0].endswith("4 hosts: 1 would-change, 1 failed, 1 unreachable, 1 ok")
    assert lines[1].startswith("INC-20261123-093112-3f2a  2026-11-23 09:31:12 UTC  failed")
    assert "web-abuse  by alice@laptop" in lines[1]
    assert main(["incident", "list", "--json", "--state-dir", recorded]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert [d["id"] for d in docs] == ["INC-20261124-101500-aa01", "INC-20261123-093112-3f2a"]
    empty = os.path.join(recorded, "..", "none")
    assert main(["incident", "list", "--state-dir", empty]) == 0
    assert capsys.readouterr().out == "no incidents recorded\n"
    assert not os.path.exists(empty)


def test_cli_show_by_a_unique_start_of_the_id(recorded, capsys):
    assert main(["incident", "show", "INC-20261123", "--state-dir", recorded]) == 0
    out = capsys.readouterr().out
    assert out.startswith("INC-20261123-093112-3f2a  Block an abusive client and restart nginx")
    assert "  web04  unreachable   ssh: connect to 10.0.0.14:22: timed out" in out
    assert "step 3: restart nginx (restart)" in out
    assert "  web02  failed        nginx failed to start: nginx: [emerg] bind()" in out
    assert "  09:32:11  stopped: 2 of 3 hosts failed" in out
    assert main(["incident", "show", "INC-20261124", "--json", "--state-dir", recorded]) == 0
    assert json.loads(capsys.readouterr().out) == sample_incident(
        "INC-20261124-101500-aa01", check=True, started=DAY2)


def test_cli_unknown_or_ambiguous_ids_exit_2_with_one_line(recorded, capsys):
    for ident, why in (("INC-1999", "no incident 'INC-1999' is recorded here"),
                       ("INC-2026112", "is the start of several incident ids")):
        for verb in ("show", "report"):
            assert main(["incident", verb, ident, "--state-dir", recorded]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and why in err and err.startswith("opsagent: ")


def test_cli_report_to_stdout_or_a_file(recorded, capsys, tmp_path):
    assert main(["incident", "report", "INC-20261123", "--state-dir", recorded]) == 0
    out = capsys.readouterr().out
    assert out == render_markdown(sample_incident())
    target = tmp_path / "pm.md"
    assert main(["incident", "report", "INC-20261124", "-o", str(target),
                 "--state-dir", recorded]) == 0
    assert capsys.readouterr().out == ("post-incident report of INC-20261124-101500-aa01 "
                                       f"written to {target}\n")
    assert target.read_text().startswith("# Incident INC-20261124-101500-aa01: ")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("pm.md")] == ["pm.md"]
    assert main(["incident", "report", "INC-20261124", "-o", str(tmp_path / "no" / "x.md"),
                 "--state-dir", recorded]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_cli_reads_the_state_dir_of_a_config(recorded, tmp_path, capsys):
    config = tmp_path / "agent.yaml"
    config.write_text(f"host: ctl01\nstate_dir: {recorded}\n")
    assert main(["incident", "list", "--config", str(config)]) == 0
    assert "INC-20261123-093112-3f2a" in capsys.readouterr().out


def test_a_failure_the_runbook_lets_pass_is_marked_ignored():
    doc = sample_incident()
    doc["outcomes"][9].update(status="failed", message="probe failed", ignored=True)
    text = render_markdown(doc)
    third = _section(text, "Actions taken")
    assert ["web03", "failed (ignored)", "probe failed (200 ms)"] in _rows(
        third[third.index("### Step 3"):])
    assert "web03: step 3 restart nginx (restart): failed (ignored) — probe failed" in text
    assert "Investigate web03" not in text  # the host is ok
