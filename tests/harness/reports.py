"""Report documents for collector tests, built with the agent's own models."""

from __future__ import annotations

import time
from typing import Any

from agent.report.document import (
    AlertDoc,
    AlertReport,
    ChangeDoc,
    PlaybookRef,
    ResultDoc,
    RevisionDoc,
    RevisionReport,
    RunReport,
    Summary,
    utc_iso,
)


def run_report(host: str, results: list[tuple[str, str, str, str | None]] | None = None,
               *, at: float | None = None, playbook: str = "web", **kw: Any) -> RunReport:
    """results: (kind, name, status, change label or None)."""
    at = time.time() if at is None else at
    docs = []
    for kind, name, status, label in results or [("files", "/etc/app.conf", "ok", None)]:
        changes = ([ChangeDoc(field="content", before="sha256:aa", after="sha256:bb",
                              reason="content differs", label=label)]  # type: ignore[arg-type]
                   if label else [])
        docs.append(ResultDoc(kind=kind, name=name, status=status,  # type: ignore[arg-type]
                              message=f"{name} {status}", changes=changes, duration_s=0.01))
    summary = Summary(**{s: sum(1 for d in docs if d.status == s)
                         for s in ("ok", "changed", "failed", "skipped")})
    return RunReport(host=host, agent_version="test", created_at=utc_iso(at), mode="apply",
                     playbook=PlaybookRef(name=playbook, path=f"/etc/opsagent/{playbook}.yaml",
                                          revision="sha256:0123"),
                     started_at=utc_iso(at), finished_at=utc_iso(at), duration_s=0.05,
                     summary=summary, results=docs, **kw)


def alert_report(host: str, key: str = "services:nginx", severity: str = "critical",
                 message: str = "restart budget exhausted", at: float | None = None
                 ) -> AlertReport:
    return AlertReport(host=host, agent_version="test",
                       created_at=utc_iso(time.time() if at is None else at),
                       alert=AlertDoc(key=key, severity=severity,  # type: ignore[arg-type]
                                      message=message))


def revision_report(host: str, rev: str = "abc123", previous: str | None = None
                    ) -> RevisionReport:
    return RevisionReport(host=host, agent_version="test",
                          revision=RevisionDoc(id=rev, previous=previous, playbooks=["web"]))
