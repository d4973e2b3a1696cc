"""`opsagent audit` end to end: real playbooks and files, exit codes, text and JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from agent.audits import AuditResult, run_audit
from agent.playbook.models.audits import AuditSpec
from tests.audits.conftest import ROOT
from tests.harness.tls import TestCA


def opsagent(*args):
    return subprocess.run([sys.executable, "-m", "agent.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def playbook(tmp_path, body: str, name: str = "pb.yaml"):
    path = tmp_path / name
    path.write_text(body)
    return path


def tree(tmp_path):
    d = tmp_path / "srv"
    d.mkdir()
    d.chmod(0o755)
    (d / "ok").write_text("x")
    (d / "ok").chmod(0o644)
    return d


def test_no_findings_exit_0(tmp_path):
    d = tree(tmp_path)
    pb = playbook(tmp_path, f"name: x\naudits:\n  - name: ww\n    world_writable: {{paths: [{d}]}}\n")
    p = opsagent("audit", pb)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0].startswith("ww (world_writable, ")
    assert p.stdout.splitlines()[0].endswith(" s): no findings")
    assert p.stdout.splitlines()[-1] == "0 findings in 1 audit"


def test_findings_exit_3_grouped_by_audit_with_variables(tmp_path):
    d = tree(tmp_path)
    (d / "open").write_text("x")
    (d / "open").chmod(0o666)
    (d / "app.env").write_text("SECRET=1")
    (d / "app.env").chmod(0o644)
    certs = tmp_path / "certs"
    certs.mkdir()
    TestCA(certs).issue("soon", days_left=5)
    pb = playbook(tmp_path, """\
name: x
vars: {root: /nonexistent}
audits:
  - name: ww
    world_writable: {paths: ["{{ root }}"]}
  - name: secrets
    severity: critical
    secrets_readable: {paths: ["{{ root }}"], patterns: ["*.env"]}
  - name: certs
    certificates: {paths: ["{{ certs }}/*.pem"]}
""")
    p = opsagent("audit", pb, "-e", f"root={d}", "-e", f"certs={certs}")
    assert p.returncode == 3, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("ww (world_writable, ") and lines[0].endswith(": 1 finding")
    assert lines[1] == f"  warning  {d}/open  world_writable: file writable by others " \
                       "(mode 0666, owner root:root)"
    assert lines[2].startswith("secrets (secrets_readable, ") and lines[2].endswith(": 1 finding")
    assert lines[3] == f"  critical  {d}/app.env  world_readable: secret readable by others " \
                       "(mode 0644, owner root:root)"
    assert lines[4].startswith("certs (certificates, ")
    assert lines[5].startswith(f"  warning  {certs}/soon.pem#1  expiring: CN=localhost expires "
                               "in 5 days")
    assert lines[-1] == "3 findings in 3 audits"

    j = opsagent("audit", pb, "-e", f"root={d}", "-e", f"certs={certs}", "--json")
    assert j.returncode == 3
    doc = json.loads(j.stdout)
    assert doc["findings"] == 3
    assert [a["name"] for a in doc["audits"]] == ["ww", "secrets", "certs"]
    ww = doc["audits"][0]
    assert ww["playbook"] == str(pb) and ww["kind"] == "world_writable" and ww["error"] is None
    assert isinstance(ww["duration_s"], float)
    assert ww["findings"] == [{"audit": "ww", "kind": "world_writable", "subject": f"{d}/open",
                               "detail": "file writable by others (mode 0666, owner root:root)",
                               "severity": "warning"}]


def test_several_playbooks_and_none_declared(tmp_path):
    a = playbook(tmp_path, "name: a\n", "a.yaml")
    p = opsagent("audit", a)
    assert p.returncode == 0 and p.stdout.strip() == "no audits declared"
    d = tree(tmp_path)
    b = playbook(tmp_path, f"name: b\naudits:\n  - {{name: ww, world_writable: {{paths: [{d}]}}}}\n",
                 "b.yaml")
    p = opsagent("audit", a, b, "--json")
    assert p.returncode == 0
    assert [x["name"] for x in json.loads(p.stdout)["audits"]] == ["ww"]


def test_bad_input_exit_2_with_located_lines(tmp_path):
    pb = playbook(tmp_path, """\
name: x
audits:
  - name: ports
    listening_ports: {allow: ["::1:6379"]}
""")
    p = opsagent("audit", pb)
    assert p.returncode == 2
    assert f"{pb}:4:31: audits[0].listening_ports.allow[0]: '::1:6379' is not " in p.stderr
    assert "IPv6 in brackets: [::1]:6379" in p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    assert opsagent("audit", tmp_path / "absent.yaml").returncode == 2
    assert opsagent("audit", pb, "-e", "not a pair").returncode == 2


def test_an_audit_that_cannot_run_is_an_error_not_all_clear(monkeypatch):
    import agent.audits.files as files

    def broken(spec, deadline):
        raise OSError("boom")

    monkeypatch.setattr(files, "audit_world_writable", broken)
    result = run_audit(AuditSpec.model_validate({"name": "w", "world_writable": {"paths": ["/x"]}}))
    assert isinstance(result, AuditResult)
    assert result.error == "world_writable audit failed: OSError: boom"
    assert result.findings == [] and result.as_dict()["error"] == result.error
