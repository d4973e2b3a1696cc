"""The rows a batch of reports becomes: each report's own row, and the fan-out of the new
ones (changes, alerts, shared blocks, each resource's latest status, incident records, the
host row).

Pure functions of the reports, so that both writers (SQLAlchemy for SQLite, psycopg's
pipeline for PostgreSQL) store exactly the same rows.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.report.document import (
    AlertReport,
    IncidentReport,
    Report,
    ResponseReport,
    RevisionReport,
    RunReport,
)

Row = dict[str, Any]
HOST_STATUSES = ("ok", "changed", "failed", "unreachable", "skipped", "would-change")


def epoch(iso: str) -> float:
    try:
        return dt.datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return time.time()


def report_row(r: Report, now: float) -> Row:
    run = r if isinstance(r, RunReport) else None
    return {"id": r.id, "host": r.host, "type": r.type, "created": epoch(r.created_at),
            "received": now, "playbook": run.playbook.name if run else None,
            "mode": run.mode if run else None,
            "changed": run.summary.changed if run else 0,
            "failed": run.summary.failed if run else 0,
            "body": r.model_dump_json()}


@dataclass
class FanOut:
    """What the new reports of one batch add to the other tables."""

    changes: list[Row]
    alerts: list[Row]
    blocks: list[Row]  # earliest end first: the order their seq numbers follow
    resources: list[Row]  # each resource's status in the newest apply run that has it
    incidents: list[Row]  # each incident's newest version
    host: Row | None  # the hosts row (revision None: no revision report came); None when
    # only incident records came: a controller that only sends those is not a managed host


def fan_out(host: str, fresh: Sequence[Report], now: float) -> FanOut:
    """The rows ``fresh`` (reports just stored, at least one) add beside themselves."""
    changes: list[Row] = []
    latest: dict[tuple[str, str], Row] = {}
    alerts: list[Row] = []
    blocks: list[Row] = []
    incidents: dict[str, Row] = {}
    revision = None
    newest = sorted(fresh, key=lambda r: r.created_at, reverse=True)
    for r in newest:
        at = epoch(r.created_at)
        if isinstance(r, IncidentReport):
            incidents.setdefault(r.incident.id, incident_row(r))  # its newest
        elif isinstance(r, RunReport):
            apply = r.mode == "apply"
            for res in r.results:
                if apply and (res.kind, res.name) not in latest:
                    latest[(res.kind, res.name)] = {
                        "host": host, "kind": res.kind, "name": res.name,
                        "playbook": r.playbook.name, "status": res.status,
                        "message": res.message[:2000], "at": at}
                if res.changes:
                    changes.extend(
                        {"report_id": r.id, "host": host, "kind": res.kind, "name": res.name,
                         "field": c.field[:64], "label": c.label or "corrective", "at": at}
                        for c in res.changes)
        elif isinstance(r, AlertReport):
            alerts.append({"report_id": r.id, "host": host, "key": r.alert.key,
                           "severity": r.alert.severity, "message": r.alert.message,
                           "at": at})
        elif isinstance(r, RevisionReport) and revision is None:
            revision = r.revision.id
        elif isinstance(r, ResponseReport) and r.response.fleet is not None:
            share = r.response.fleet
            blocks.extend({"report_id": r.id, "grp": share.group, "addr": b.addr,
                           "until": b.until, "origin": host, "rule": r.response.watch[:255],
                           "reason": f"{r.response.matches} matches for "
                                     f"{r.response.key[:100]} on {host}"}
                          for b in share.blocks)
    managed = next((r for r in newest if not isinstance(r, IncidentReport)), None)
    return FanOut(changes=changes, alerts=alerts,
                  blocks=sorted(blocks, key=lambda b: b["until"]),
                  resources=list(latest.values()), incidents=list(incidents.values()),
                  host=None if managed is None else {
                      "name": host, "first_seen": now, "last_seen": now,
                      "agent_version": managed.agent_version, "revision": revision})


def incident_row(r: IncidentReport) -> Row:
    inc = r.incident
    counts = {s: sum(1 for h in inc.hosts if h.status == s) for s in HOST_STATUSES}
    return {"id": inc.id, "report_id": r.id, "host": r.host, "runbook": inc.runbook.name,
            "title": inc.title, "operator": inc.by, "dry_run": int(inc.check),
            "status": inc.status, "started": epoch(inc.started_at),
            "finished": epoch(inc.finished_at) if inc.finished_at else None,
            "updated": epoch(r.created_at), "counts": json.dumps(counts)}
