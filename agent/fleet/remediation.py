"""A runbook run over its hosts as an incident: binding every host, the parts between
confirm points, and the incident record from opening to the recap.

agent.cli_fleet.cmd_remediate wires these to the command line, agent.fleet.orchestrate runs
the waves, agent.fleet.incidents keeps and sends the record.
"""

from __future__ import annotations

import time
from typing import Any

from agent.fleet.orchestrate import FleetRun, HostState, where
from agent.fleet.runbook import LoadedRunbook


def bind_all(rb: LoadedRunbook, params: dict[str, Any], hosts: list[HostState]
             ) -> dict[str, list[Any]]:
    """Every host's bound steps; one InputError with every host's problems."""
    from agent.errors import InputError
    from agent.fleet.runbook import bind

    bound: dict[str, list[Any]] = {}
    errors = []
    for h in hosts:
        try:
            bound[h.name] = bind(rb, params, h.name, h.vars)
        except InputError as e:
            errors.extend(e.diagnostics)
    if errors:
        raise InputError(errors)
    return bound


def open_incident(rb: LoadedRunbook, params: dict[str, Any], bound: dict[str, list[Any]],
                  run: FleetRun, *, by: str, check: bool, inventory: str | None,
                  limit: str | None) -> dict[str, Any]:
    """The incident record of a run about to start (schemas/report.schema.json, incident)."""
    from agent.fleet.incidents import new_incident_id

    steps = next(iter(bound.values()))
    n = len(run.hosts)
    doc: dict[str, Any] = {
        "id": new_incident_id(time.time()),
        "runbook": {"name": rb.name, "path": rb.path, "revision": rb.revision,
                    "description": rb.model.description},
        "title": rb.model.description or rb.name, "by": by, "check": check,
        "params": params, "inventory": inventory, "limit": limit, "finished_at": None,
        "status": "running", "hosts": [],
        "steps": [{"index": i, "name": s.title, "action": s.action}
                  for i, s in enumerate(steps)],
        "outcomes": [], "timeline": run.timeline, "followups": _followups(rb, params)}
    doc["started_at"] = run.event(f"started by {by}: {rb.name}{' (dry run)' if check else ''}"
                                  f" on {n} host{'s' if n != 1 else ''}")
    return doc


def parts(rb: LoadedRunbook, doc: dict[str, Any], bound: dict[str, list[Any]]
          ) -> list[tuple[str | None, Any, Any]]:
    """The runbook split at its confirm steps: (question before it, request, absorb)."""
    from agent.fleet.execute import step_dicts

    notifiers = {k: v.model_dump(mode="json", exclude_none=True)
                 for k, v in rb.model.notifiers.items()}

    def part(indices: list[int]) -> tuple[Any, Any]:
        def request(h: HostState) -> dict[str, Any]:
            return {"op": "remediate", "host": h.name, "incident": doc["id"], "who": doc["by"],
                    "check": doc["check"], "on_failure": rb.model.on_failure,
                    "notifiers": notifiers, "steps": step_dicts(bound[h.name]),
                    "indices": indices, "undo_log": h.undo_log, **where(h)}

        return request, _absorb

    out: list[tuple[str | None, Any, Any]] = []
    prompt: str | None = None
    chunk: list[int] = []
    for i, s in enumerate(next(iter(bound.values()))):
        if s.confirm is not None:
            if chunk:
                out.append((prompt, *part(chunk)))
            prompt, chunk = s.confirm, []
        else:
            chunk.append(i)
    if chunk:
        out.append((prompt, *part(chunk)))
    return out


def _absorb(h: HostState, answer: dict[str, Any]) -> None:
    """A host's answer to one part: its outcomes, undo log and status."""
    from agent.fleet.execute import host_status

    got = answer["run"]
    for o in got["outcomes"]:
        o["host"] = h.name
    h.outcomes.extend(got["outcomes"])
    h.undo_log = got["undo_log"]
    h.stopped = bool(got["stopped"])
    h.status = host_status(h.outcomes)
    bad = [o for o in h.outcomes
           if o["status"] in ("failed", "rolled-back") and not o.get("ignored")]
    h.message = bad[0]["message"] if bad else ""


def close_incident(doc: dict[str, Any], run: FleetRun) -> None:
    """Hosts, outcomes in time order, and the run's status, once the waves are over."""
    doc["finished_at"] = run.event(f"finished{f' ({run.aborted})' if run.aborted else ''}")
    doc["hosts"] = [{"name": h.name, "status": h.status, "message": h.message,
                     **({"served_by": h.served_by} if h.served_by else {})}
                    for h in run.hosts]
    doc["outcomes"] = sorted((o for h in run.hosts for o in h.outcomes),
                             key=lambda o: (o["started_at"], o["host"]))
    failed = any(h.failed for h in run.hosts)
    doc["status"] = ("aborted" if run.aborted else "failed" if failed
                     else "checked" if doc["check"] else "succeeded")


def _followups(rb: LoadedRunbook, params: dict[str, Any]) -> list[str]:
    """The runbook's follow-ups with the run's parameters filled in."""
    from agent.playbook.templating import has_template, render

    out = []
    for text in rb.model.followups:
        try:
            out.append(str(render(text, {**rb.model.vars, **params})) if has_template(text)
                       else text)
        except Exception:  # a follow-up naming a host variable: kept as written
            out.append(text)
    return out


def render_recap(doc: dict[str, Any]) -> str:
    """Per step, each host's outcome; then one line per host (Ansible's PLAY RECAP)."""
    lines = []
    names = {s["index"]: s["name"] for s in doc["steps"]}
    width = max([len(h["name"]) for h in doc["hosts"]] + [4])
    for o in doc["outcomes"]:
        status = "ignored" if o.get("ignored") else o["status"]
        lines.append(f"{o['host']:<{width}}  [{o['step'] + 1}] {names.get(o['step'], '?'):<24.24}"
                     f"  {status:<12} {o['message']}")
    lines.append("")
    lines.append("RECAP")
    for h in doc["hosts"]:
        counts: dict[str, int] = {}
        for o in doc["outcomes"]:
            if o["host"] == h["name"]:
                status = "ignored" if o.get("ignored") else o["status"]
                counts[status] = counts.get(status, 0) + 1
        tally = "  ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        why = f"  {h['message']}" if h["status"] in ("unreachable", "skipped") else ""
        lines.append(f"{h['name']:<{width}}  {h['status']:<12} {tally}{why}".rstrip())
    return "\n".join(lines)
