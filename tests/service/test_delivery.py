"""Reports are never lost and never doubled: the real agent, outbox and sender against a
real collector, through crashes of either side, outages, 5xx and slow answers."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from agent.report.outbox import Outbox
from agent.report.sender import Sender
from tests.harness.collector import CollectorProc
from tests.harness.reports import alert_report, run_report
from tests.service.agentproc import AgentProc, wait_for


def stored_ids(collector: CollectorProc, host: str) -> list[str]:
    return [r["id"] for r in collector.stored(host)]


def outbox_ids(state: Path) -> set[str]:
    db = state / "state.db"
    if not db.exists():
        return set()
    with sqlite3.connect(db) as conn:
        return {r for (r,) in conn.execute("SELECT id FROM outbox")}


def agent_config(root: Path, collector: CollectorProc, token: str, interval: str = "1s") -> str:
    (root / "token").write_text(token + "\n")
    (root / "pb").mkdir(exist_ok=True)
    files = "\n".join(f"  - path: {root}/out/f{i}.txt\n    content: \"{i}\"" for i in range(30))
    (root / "pb" / "files.yaml").write_text(f"name: files\nfiles:\n{files}\n")
    return textwrap.dedent(f"""\
        host: web01
        playbooks: [pb]
        state_dir: state
        reconcile_interval: {interval}
        log_format: json
        collector: {{url: "{collector.url}", token_file: token}}
        """)


def test_kill_9_mid_apply_50_times_loses_and_doubles_nothing(tmp_path, collector):
    token = collector.token("web01")
    agent = AgentProc(tmp_path, config=agent_config(tmp_path, collector, token))
    rng = random.Random(7)
    produced: set[str] = set()
    for i in range(50):
        out = tmp_path / "out"
        if out.exists() and i % 2:  # half the starts have drift to repair mid-apply
            for f in list(out.iterdir())[:10]:
                f.unlink()
        if i % 5 == 0:
            agent.start()  # waits for a full reconcile: a report was surely produced
        else:
            agent.spawn()
        time.sleep(rng.uniform(0.05, 0.6))
        agent.proc.kill()  # type: ignore[union-attr]
        agent.proc.wait()  # type: ignore[union-attr]
        produced |= outbox_ids(agent.state)
        produced |= {e["report_id"] for e in agent.logs() if "report_id" in e}
    agent.start()
    wait_for(lambda: not outbox_ids(agent.state), 60, "the outbox to drain")
    assert agent.stop() == 0
    produced |= {e["report_id"] for e in agent.logs() if "report_id" in e}
    ids = stored_ids(collector, "web01")
    assert len(ids) == len(set(ids))  # stored once each
    missing = produced - set(ids)
    assert not missing, f"{len(missing)} reports produced before a kill never arrived"
    print(f"{len(produced)} reports produced across 50 kills, {len(ids)} stored")
    assert len(produced) >= 10  # the loop did produce reports (every fifth start surely)


def filled_outbox(tmp_path: Path, runs: int, alerts: int = 0) -> tuple[Outbox, list]:
    """An outbox holding ``runs`` run reports (each with a corrective change) and ``alerts``
    alert reports, as an agent cut off from its collector would have queued them."""
    outbox = Outbox(str(tmp_path / "state"), "web01", "test")
    reports = [run_report("web01", [("files", f"/f{i % 40}", "changed", "corrective")])
               for i in range(runs)] + [alert_report("web01") for _ in range(alerts)]
    for k in range(0, len(reports), 500):
        outbox.put_many(reports[k:k + 500])
    return outbox, reports


def test_collector_down_while_10000_reports_wait_all_arrive_once(tmp_path):
    coll = CollectorProc(str(tmp_path / "c.db"), tmp_path / "c.log")
    token_file = tmp_path / "token"
    outbox, reports = filled_outbox(tmp_path, 9_000, 1_000)
    sender = Sender(outbox, coll.url, str(token_file), batch_size=500, timeout=5,
                    backoff_first=0.1, backoff_cap=0.5)
    sender.start()
    try:
        wait_for(lambda: sender.state()["consecutive_failures"] >= 2, 20,
                 "the sender to fail against the absent collector")
        assert outbox.stats()["depth"] == 10_000
        coll.start()
        token_file.write_text(coll.token("web01"))
        assert sender.flush(120), sender.state()
    finally:
        sender.stop()
    try:
        ids = stored_ids(coll, "web01")
        assert len(ids) == 10_000 and set(ids) == {r.id for r in reports}
        assert len(coll.get("/api/v1/alerts?limit=1000")) == 1_000
    finally:
        coll.stop()


class FlakyProxy:
    """A real HTTP proxy on 127.0.0.1 in front of the collector that, after forwarding a
    batch (so the collector HAS stored it), answers 503 or stalls past the sender's timeout —
    the cases where an agent cannot know its batch arrived and must send it again."""

    def __init__(self, upstream: str, seed: int = 3) -> None:
        self.upstream = upstream
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts = {"forwarded": 0, "503": 0, "slow": 0, "dropped": 0}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with proxy.lock:
                    fate = proxy.rng.choice(["ok", "ok", "503", "slow", "drop"])
                if fate == "drop":  # 5xx before the collector saw anything
                    proxy.answer(self, 502, b'{"detail": "bad gateway"}', "dropped")
                    return
                try:
                    r = httpx.post(proxy.upstream + self.path, content=body, timeout=30,
                                   headers={k: v for k, v in self.headers.items()
                                            if k.lower() != "host"})
                except httpx.HTTPError:
                    proxy.answer(self, 502, b"{}", "dropped")
                    return
                with proxy.lock:
                    proxy.counts["forwarded"] += 1
                if fate == "503":
                    proxy.answer(self, 503, b'{"detail": "busy"}', "503")
                elif fate == "slow":
                    time.sleep(1.5)  # past the sender's 1 s timeout
                    proxy.answer(self, r.status_code, r.content, "slow")
                else:
                    proxy.answer(self, r.status_code, r.content, None)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, h: BaseHTTPRequestHandler, code: int, body: bytes, what: str | None
               ) -> None:
        if what:
            with self.lock:
                self.counts[what] += 1
        try:
            h.send_response(code)
            h.send_header("content-type", "application/json")
            h.send_header("content-length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        except OSError:
            pass

    def close(self) -> None:
        self.server.shutdown()


def test_5xx_slow_answers_and_a_collector_killed_mid_batch_lose_and_double_nothing(
        tmp_path):
    coll = CollectorProc(str(tmp_path / "c.db"), tmp_path / "c.log").start()
    proxy = FlakyProxy(coll.url)
    token_file = tmp_path / "token"
    token_file.write_text(coll.token("web01"))
    outbox, reports = filled_outbox(tmp_path, 3_000)
    sender = Sender(outbox, proxy.url, str(token_file), batch_size=100, timeout=1,
                    backoff_first=0.05, backoff_cap=0.3)
    sender.start()
    try:
        wait_for(lambda: outbox.stats()["depth"] <= 1_500, 120, "half the reports to go")
        coll.stop(signal.SIGKILL)  # killed mid-batch: the proxy forwards into nothing
        time.sleep(0.5)
        coll.start()
        assert sender.flush(180), sender.state()
    finally:
        sender.stop()
        proxy.close()
    try:
        ids = stored_ids(coll, "web01")
        assert len(ids) == 3_000 and set(ids) == {r.id for r in reports}
        c = proxy.counts
        assert c["503"] > 0 and c["slow"] > 0 and c["dropped"] > 0, c  # each case happened
    finally:
        coll.stop()


def test_the_agent_reports_runs_labels_alerts_revisions_and_serves_metrics(tmp_path, collector):
    from tests.harness.collector import free_port

    token = collector.token("web01")
    port = free_port()
    config = agent_config(tmp_path, collector, token, interval="60s")
    config += f'metrics_listen: "127.0.0.1:{port}"\n'
    agent = AgentProc(tmp_path, config=config).start()
    try:
        target = tmp_path / "out" / "f3.txt"
        target.write_text("tampered")  # drift: inotify, repaired, labelled corrective
        wait_for(lambda: target.read_text() == "3", 10, "the repair")
        (tmp_path / "pb" / "files.yaml").write_text("name: files\nfiles: [{path: 1}]\n")
        agent.signal(signal.SIGHUP)  # a bad edit: refused, an alert

        def arrived() -> list[dict] | None:
            r = httpx.get(collector.url + "/api/v1/hosts/web01/reports?limit=100")
            if r.status_code == 404:  # nothing has arrived yet
                return None
            reports = r.raise_for_status().json()
            types = {r["type"] for r in reports}
            return reports if {"run", "revision", "alert"} <= types else None

        reports = wait_for(arrived, 20, "run, revision and alert reports at the collector")
        labels = [(r["name"], c["label"]) for rep in reports if rep["type"] == "run"
                  for r in rep["results"] for c in r["changes"]]
        assert (str(target), "corrective") in labels
        first = {n for n, lab in labels if lab == "intentional"}  # the first apply
        assert first == {str(tmp_path / "out" / f"f{i}.txt") for i in range(30)}
        (alert,) = collector.get("/api/v1/alerts")
        assert alert["key"] == "playbooks" and "refused" in alert["message"]
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'opsagent_reconciles_total{trigger="full"}' in text
        assert "opsagent_outbox_reports " in text
        assert 'opsagent_alerts_total{severity="critical"} 1.0' in text
        status = subprocess.run([sys.executable, "-m", "agent.cli", "status", "--config",
                                 str(agent.config)], capture_output=True, text=True)
        assert f"collector: {collector.url}" in status.stdout
    finally:
        agent.stop()
