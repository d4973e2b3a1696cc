"""Log metrics and audits in a real agent: a threshold on the share of 5xx lines in an access
log fires and resolves ("error rate above 5 % for a while"); an audit's new finding is
alerted and notified once, and not again after a restart."""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path
from typing import Any

from tests.harness.recorders import HttpRecorder
from tests.service.agentproc import AgentProc, wait_for


def access(status: int) -> str:
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
    return f'192.0.2.7 - - [{stamp}] "GET /api HTTP/1.1" {status} 12 "-" "curl"\n'


def start(root: Path, playbook: str) -> AgentProc:
    (root / "pb").mkdir(exist_ok=True)
    (root / "pb" / "web.yaml").write_text(textwrap.dedent(playbook))
    return AgentProc(root).start()


def test_error_share_threshold_fires_and_resolves(tmp_path: Path) -> None:
    hook = HttpRecorder()
    log = tmp_path / "access.log"
    log.write_text("")
    proc = start(tmp_path, f"""\
        name: web
        watches:
          - {{name: nginx, log: {log}, pattern: '" 5\\d\\d ', rate_window: 4s}}
        thresholds:
          - {{name: errors, metric: watch.nginx.match_percent, above: 5, for: 2s,
             interval: 1s, actions: [{{notify: hook}}]}}
        notifiers:
          hook: {{webhook: {{url: "{hook.url}"}}}}
        """)
    stop = time.monotonic() + 60
    try:
        def feed(errors: int, ok: int) -> None:
            with open(log, "a") as fh:
                fh.write("".join([access(502)] * errors + [access(200)] * ok))

        def states() -> list[str]:
            return [e["state"] for r in hook.requests for e in json.loads(r.body)["events"]]

        while "firing" not in states() and time.monotonic() < stop:
            feed(2, 18)  # 10 % errors
            time.sleep(0.5)
        assert states() == ["firing"]
        while "resolved" not in states() and time.monotonic() < stop:
            feed(0, 20)
            time.sleep(0.5)
        assert states() == ["firing", "resolved"]
        st = proc.status() or {}
        assert st["watches"]["nginx"]["matched"] > 0
    finally:
        proc.stop()
        hook.close()


def test_audit_findings_are_told_once(tmp_path: Path) -> None:
    hook = HttpRecorder()
    secrets = tmp_path / "app"
    secrets.mkdir()
    leaked = secrets / "app.env"
    leaked.write_text("TOKEN=x\n")
    os.chmod(leaked, 0o644)
    playbook = f"""\
        name: sec
        audits:
          - {{name: secrets, secrets_readable: {{paths: ["{secrets}"], patterns: ["*.env"]}},
             notify: [hook]}}
        notifiers:
          hook: {{webhook: {{url: "{hook.url}"}}}}
        """
    proc = start(tmp_path, playbook)
    try:
        wait_for(lambda: hook.requests, 20, "the finding's notification")
        event = json.loads(hook.requests[0].body)["events"][0]
        assert event["rule"] == "audit:secrets" and str(leaked) in event["summary"]
    finally:
        proc.stop()
    proc = AgentProc(tmp_path).start()
    try:
        time.sleep(8)  # the first run after start-up comes at 5 s
        assert len(hook.requests) == 1, "the same finding told again after a restart"
    finally:
        proc.stop()
        hook.close()


def test_a_container_log_line_restarts_the_container(tmp_path: Path, docker_client: object,
                                                     busybox_image: str) -> None:
    """A watch on a container's logs (the Docker API) answers a fatal line with a restart,
    through the handler path and the container's restart budget."""
    import contextlib
    import uuid

    name = f"opsagent-wl-{uuid.uuid4().hex[:8]}"
    script = ("i=0; while true; do i=$((i+1)); echo tick $i; "
              "[ -f /tmp/fatal ] && echo 'FATAL: out of workers'; sleep 0.2; done")
    proc = start(tmp_path, f"""\
        name: app
        containers:
          - name: {name}
            image: '{busybox_image}'
            command: [sh, -c, "{script}"]
            restart: {{max: 3, within: 10m, backoff: 0s}}
        watches:
          - name: fatal
            container: {name}
            pattern: 'FATAL: (?P<what>.*)'
            within: 1m
            actions: [{{restart: "containers:{name}"}}]
        """)
    client: Any = docker_client
    try:
        c = client.containers.get(name)
        started = c.attrs["State"]["StartedAt"]
        time.sleep(1.0)
        assert client.containers.get(name).attrs["State"]["StartedAt"] == started
        c.exec_run(["touch", "/tmp/fatal"])
        wait_for(lambda: client.containers.get(name).attrs["State"]["StartedAt"] != started,
                 20, "the restart")
        assert "watch:fatal fired: restarting containers:" + name in proc.log_text()
        st = wait_for(lambda: (w := ((proc.status() or {}).get("watches") or {}).get("fatal"))
                      and w["fired"] >= 1 and w, 10, "the watch's status")
        assert st["source"] == f"container:{name}" and st["lines"] > 3
    finally:
        proc.stop()
        with contextlib.suppress(Exception):
            client.containers.get(name).remove(force=True)
