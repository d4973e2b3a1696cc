"""Audits run on real files, sockets and certificates made by the tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.audits import AuditResult, run_audit
from agent.playbook.models.audits import AuditSpec

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534  # uid of nobody, gid of nogroup (Debian)


def audit(kind: str, severity: str = "warning", timeout: str = "5m",
          **fields: Any) -> AuditResult:
    """run_audit on an AuditSpec built from a playbook-like mapping of one kind."""
    spec = AuditSpec.model_validate({"name": "t", "severity": severity, "timeout": timeout,
                                     kind: fields})
    result = run_audit(spec)
    assert result.error is None, result.error
    json.dumps(result.as_dict())  # JSON-able as it is
    return result


def keys(result: AuditResult) -> set[tuple[str, str, str]]:
    """{(kind, subject, severity)} of the findings."""
    return {(f.kind, f.subject, f.severity) for f in result.findings}


def audit_as(uid: int, kind: str, **fields: Any) -> dict[str, Any]:
    """The audit run by another user (a subprocess under setpriv), as its as_dict()."""
    code = ("import json, sys\n"
            "from agent.audits import run_audit\n"
            "from agent.playbook.models.audits import AuditSpec\n"
            "spec = AuditSpec.model_validate(json.loads(sys.argv[1]))\n"
            "print(json.dumps(run_audit(spec).as_dict()))\n")
    spec = json.dumps({"name": "t", kind: fields})
    p = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                        sys.executable, "-c", code, spec], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd="/")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users can reach (tmp_path's parents are root's only)."""
    path = Path(tempfile.mkdtemp(prefix="opsagent-audit-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
