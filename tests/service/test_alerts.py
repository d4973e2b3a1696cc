"""Checks, thresholds and alerts end to end: a real agent process, real services failing,
and real servers on 127.0.0.1 standing in for Slack, PagerDuty, a webhook and SMTP, which
record what they receive."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx

from tests.harness.collector import free_port
from tests.harness.recorders import HttpRecorder, SmtpRecorder
from tests.harness.targets import HttpTarget, mounted_tmpfs
from tests.harness.tls import TestCA, TlsServer
from tests.service.agentproc import REPO, AgentProc, alive, read_pid, wait_for

SLACK_ENV = "TEST_SLACK_URL"
PD_KEY_ENV = "TEST_PD_KEY"


def agent(root: Path, playbook: str, env: dict[str, str] | None = None,
          extra_config: str = "") -> AgentProc:
    (root / "pb").mkdir()
    (root / "pb" / "alerts.yaml").write_text(textwrap.dedent(playbook))
    proc = AgentProc(root, textwrap.dedent("""\
        host: web01
        playbooks: [pb]
        state_dir: state
        reconcile_interval: 60s
        log_format: json
        """) + extra_config)
    return proc.start(env=env)


def opsagent(*args: str, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args, "--state-dir",
                           str(root / "state")], cwd=REPO, capture_output=True, text=True,
                          timeout=30)


def disk_playbook(rule: str, mnt: Path, notifier: str, limits: str = "above: 60",
                  extra: str = "") -> str:
    """A playbook with one disk threshold on ``mnt`` told to ``notifier`` (YAML mapping)."""
    return (f"name: disk\nthresholds:\n  - {{name: {rule}, metric: disk.used_percent, "
            f"path: {mnt}, {limits}, interval: 1s, actions: [{{notify: n}}]}}\n"
            f"notifiers:\n  n: {notifier}\n{extra}")


def webhook(rec: HttpRecorder) -> str:
    return f'{{webhook: {{url: "{rec.url}"}}}}'


def bodies(rec: HttpRecorder) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in rec.requests]


def test_http_500_fires_after_for_notifies_slack_and_pagerduty_once_then_resolves(
        tmp_path: Path) -> None:
    api = HttpTarget()
    slack, pd = HttpRecorder(), HttpRecorder(status=202, body=b'{"status": "success"}')
    health = free_port()
    proc = agent(tmp_path, f"""\
        name: web
        checks:
          - {{name: api, interval: 1s, http: {{url: "{api.url('/health')}", timeout: 2s}}}}
        thresholds:
          - {{name: api-down, metric: check.api.ok, below: 1, for: 3s, severity: critical,
             repeat: 1h, actions: [{{notify: slack}}, {{notify: pager}}]}}
        notifiers:
          slack: {{slack: {{webhook_url_env: {SLACK_ENV}, channel: "#ops"}}}}
          pager: {{pagerduty: {{routing_key_env: {PD_KEY_ENV}, url: "{pd.url}"}}}}
        """, env={SLACK_ENV: slack.url, PD_KEY_ENV: "R0UT1NGKEY"},
        extra_config=f"health_listen: 127.0.0.1:{health}\n")
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{health}/health").status_code == 200,
                 15, "/health answering 200 while the API is healthy")
        api.server.state["status"] = 500
        broke = time.monotonic()
        wait_for(lambda: slack.requests and pd.requests, 20, "Slack and PagerDuty notified")
        assert time.monotonic() - broke >= 3.0  # held `for: 3s` before firing
        r = httpx.get(f"http://127.0.0.1:{health}/health")
        assert r.status_code == 503
        assert r.json()["checks"]["api"]["status"] == "unhealthy"
        time.sleep(3)  # still failing: no second notification
        assert len(slack.requests) == 1 and len(pd.requests) == 1
        msg = bodies(slack)[0]
        assert "api-down" in msg["text"] and "web01" in msg["text"]
        assert msg["channel"] == "#ops"
        trigger = bodies(pd)[0]
        assert trigger["event_action"] == "trigger" and trigger["routing_key"] == "R0UT1NGKEY"
        assert trigger["payload"]["severity"] == "critical"
        assert trigger["payload"]["source"] == "web01"
        firing = wait_for(lambda: [a for a in (proc.status() or {}).get("alerts", [])
                                   if a["state"] == "firing"], 10, "the alert in status.json")
        alert_id = firing[0]["alert_id"]
        listed = opsagent("alert", "list", root=tmp_path)
        assert alert_id in listed.stdout and "firing" in listed.stdout

        api.server.state["status"] = 200
        wait_for(lambda: len(slack.requests) == 2 and len(pd.requests) == 2, 20,
                 "the resolve sent to both")
        resolve = bodies(pd)[1]
        assert resolve["event_action"] == "resolve"
        assert resolve["dedup_key"] == trigger["dedup_key"]
        assert "resolved" in bodies(slack)[1]["text"]
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{health}/health").status_code == 200,
                 10, "/health back to 200")
        time.sleep(2)
        assert len(slack.requests) == 2 and len(pd.requests) == 2
    finally:
        proc.stop()
        api.close()
        slack.close()
        pd.close()


def test_postgres_held_near_max_connections_fires(tmp_path: Path, postgres: Any) -> None:
    import psycopg

    hook = HttpRecorder()
    dsn = f"host=127.0.0.1 port={postgres.port} user=postgres dbname=postgres"
    proc = agent(tmp_path, f"""\
        name: db
        checks:
          - {{name: db, interval: 1s, postgres: {{dsn_env: TEST_DSN}}}}
        thresholds:
          - {{name: db-connections, metric: check.db.connections_percent, above: 15,
             for: 2s, actions: [{{notify: hook}}]}}
        notifiers:
          hook: {{webhook: {{url: "{hook.url}"}}}}
        """, env={"TEST_DSN": dsn})
    held = []
    try:
        wait_for(lambda: (proc.status() or {}).get("checks", {}).get("db", {}).get("at"), 15,
                 "the first PostgreSQL check")
        assert hook.requests == []
        max_conn = int(proc.status()["checks"]["db"]["values"]["max_connections"])  # type: ignore[index]
        held = [psycopg.connect(dsn) for _ in range(int(max_conn * 0.2) + 1)]
        wait_for(lambda: hook.requests, 20, "the webhook told of the connections")
        event = bodies(hook)[0]["events"][0]
        assert event["rule"] == "db-connections" and event["state"] == "firing"
        assert event["value"] > 15
    finally:
        for c in held:
            c.close()
        proc.stop()
        hook.close()


def test_disk_threshold_fires_on_a_small_filesystem_the_test_fills(tmp_path: Path) -> None:
    hook = HttpRecorder()
    with mounted_tmpfs(tmp_path / "mnt") as mnt:
        proc = agent(tmp_path, disk_playbook("disk-small", mnt, webhook(hook)))
        try:
            time.sleep(1.5)
            assert hook.requests == []
            (mnt / "fill").write_bytes(b"x" * (3 << 20))  # 3 of 4 MiB
            wait_for(lambda: hook.requests, 15, "the disk alert")
            event = bodies(hook)[0]["events"][0]
            assert event["state"] == "firing" and event["labels"] == {"path": str(mnt)}
            assert 60 < event["value"] <= 100
            (mnt / "fill").unlink()
            wait_for(lambda: len(hook.requests) == 2, 15, "the resolve")
            assert bodies(hook)[1]["events"][0]["state"] == "resolved"
        finally:
            proc.stop()
            hook.close()


def test_flapping_inside_the_hysteresis_band_notifies_once(tmp_path: Path) -> None:
    hook = HttpRecorder()
    with mounted_tmpfs(tmp_path / "mnt") as mnt:
        proc = agent(tmp_path, disk_playbook("disk-band", mnt, webhook(hook),
                                             "above: 70, clear_below: 30"))
        try:
            fill = mnt / "fill"
            for size_mib in (3.5, 2, 3.5, 1.5, 3.6, 2.2, 3.5):  # 87 %, 50 %, … never < 30 %
                fill.write_bytes(b"x" * int(size_mib * (1 << 20)))
                time.sleep(1.3)
            wait_for(lambda: hook.requests, 5, "the firing")
            time.sleep(1.5)
            assert [e["state"] for b in bodies(hook) for e in b["events"]] == ["firing"]
        finally:
            proc.stop()
            hook.close()


def test_maintenance_window_and_silence_mute_notifications(tmp_path: Path,
                                                           collector: Any) -> None:
    hook = HttpRecorder()
    token = collector.token("web01")
    (tmp_path / "token").write_text(token)
    now = time.time()
    iso = "%Y-%m-%dT%H:%M:%SZ"
    with mounted_tmpfs(tmp_path / "mnt") as mnt:
        (mnt / "fill").write_bytes(b"x" * (3 << 20))
        window = (f"maintenance: [{{name: patching, from: "
                  f"'{time.strftime(iso, time.gmtime(now - 60))}', "
                  f"until: '{time.strftime(iso, time.gmtime(now + 8))}'}}]\n")
        proc = agent(tmp_path, disk_playbook("disk-a", mnt, webhook(hook), extra=window),
                     extra_config=f"collector: {{url: '{collector.url}', token_file: token}}\n")
        try:
            def muted_firing() -> list[dict[str, Any]]:
                return [r for r in collector.stored("web01")
                        if r.get("type") == "alert" and r["alert"].get("state") == "firing"]
            fired = wait_for(muted_firing, 15, "the muted firing reported to the collector")
            assert fired[0]["alert"]["muted_by"] == "maintenance window patching"
            assert hook.requests == []
            wait_for(lambda: hook.requests, 20, "the notification once the window closed")
            assert bodies(hook)[0]["events"][0]["state"] == "firing"
        finally:
            proc.stop()
    # a silence from the command line mutes a second agent's alert until removed
    hook2 = HttpRecorder()
    root2 = tmp_path / "second"
    root2.mkdir()
    with mounted_tmpfs(root2 / "mnt") as mnt:
        (mnt / "fill").write_bytes(b"x" * (3 << 20))
        out = opsagent("silence", "add", "disk-*", "--for", "1h", "--comment", "resize",
                       root=root2)
        assert out.returncode == 0, out.stderr
        silence_id = out.stdout.split()[1]
        proc = agent(root2, disk_playbook("disk-b", mnt, webhook(hook2)))
        try:
            wait_for(lambda: (proc.status() or {}).get("alerts"), 10, "the alert firing")
            time.sleep(2)
            assert hook2.requests == []
            assert opsagent("silence", "remove", silence_id, root=root2).returncode == 0
            wait_for(lambda: hook2.requests, 15, "the notification after the silence ended")
        finally:
            proc.stop()
            hook.close()
            hook2.close()


def test_certificate_with_5_days_left_warns(tmp_path: Path) -> None:
    (tmp_path / "ca").mkdir()
    ca = TestCA(tmp_path / "ca")
    server = TlsServer(ca.issue("localhost", days_left=5))
    hook = HttpRecorder()
    proc = agent(tmp_path, f"""\
        name: tls
        checks:
          - {{name: cert, interval: 1s, tls: {{host: 127.0.0.1, port: {server.port},
             server_name: localhost, ca_file: "{ca.ca_file}"}}}}
        thresholds:
          - {{name: cert-expiry, metric: check.cert.days_left, below: 14, severity: warning,
             actions: [{{notify: hook}}]}}
        notifiers:
          hook: {{webhook: {{url: "{hook.url}"}}}}
        """)
    try:
        wait_for(lambda: hook.requests, 15, "the certificate warning")
        event = bodies(hook)[0]["events"][0]
        assert event["severity"] == "warning" and 4.9 < event["value"] < 5.1
        check = wait_for(lambda: ((proc.status() or {}).get("checks") or {}).get("cert", {})
                         .get("status") != "pending" and proc.status()["checks"]["cert"], 10,
                         "the check in status.json")
        assert check["status"] == "degraded" and "5" in check["message"]
    finally:
        proc.stop()
        server.close()
        hook.close()


def test_smtp_down_delays_the_mail_but_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    with mounted_tmpfs(tmp_path / "mnt") as mnt:
        (mnt / "fill").write_bytes(b"x" * (3 << 20))
        mail = (f"{{email: {{to: [ops@example.com], from: agent@example.com, "
                f"smtp: {{host: 127.0.0.1, port: {port}}}}}}}")
        proc = agent(tmp_path, disk_playbook("disk-mail", mnt, mail))
        smtp = SmtpRecorder(port=port)
        try:
            wait_for(lambda: ((proc.status() or {}).get("notifications") or {}).get("count"),
                     15, "the mail waiting in the queue")
            time.sleep(2)
            smtp.start()
            wait_for(lambda: smtp.messages, 30, "the mail delivered once SMTP is up")
            time.sleep(2)
            assert len(smtp.messages) == 1
            assert "disk-mail" in smtp.messages[0]["Subject"]
        finally:
            proc.stop()
            smtp.stop()


def test_a_firing_threshold_restarts_and_runs_once_per_episode(
        tmp_path: Path, mark: str) -> None:
    out = tmp_path / "ran"
    pidfile = tmp_path / "worker.pid"
    with mounted_tmpfs(tmp_path / "mnt") as mnt:
        proc = agent(tmp_path, f"""\
            name: act
            processes:
              - name: worker
                match: {{pidfile: {pidfile}}}
                start: [{sys.executable}, -c, "import time; time.sleep(10**6)", {mark}]
                pidfile: {pidfile}
            thresholds:
              - name: disk-act
                metric: disk.used_percent
                path: {mnt}
                above: 60
                interval: 1s
                actions:
                  - restart: "processes:worker"
                  - run:
                      argv: [{sys.executable}, -c,
                             "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + chr(10))",
                             "{out}", "{{{{ rule }}}} {{{{ value | round(0) }}}}; rm -rf /"]
            """)
        try:
            first = wait_for(lambda: (p := read_pid(pidfile)) and alive(p) and p, 10,
                             "the worker")
            (mnt / "fill").write_bytes(b"x" * (3 << 20))
            wait_for(lambda: out.exists() and out.read_text(), 15, "the run action")
            new = wait_for(lambda: (p := read_pid(pidfile)) != first and alive(p) and p, 15,
                           "the worker restarted by the action")
            assert new != first
            time.sleep(2.5)  # still firing: the actions ran once for this episode
            (line,) = out.read_text().splitlines()
            assert line.startswith("disk-act ") and line.endswith("; rm -rf /")  # one argument
            assert read_pid(pidfile) == new
            events = [e for e in proc.logs() if e.get("rule") == "disk-act"]
            assert any("restarting processes:worker" in e["msg"] for e in events)
        finally:
            proc.stop()
