"""`opsagent status`: the running agent's revision, resources, budgets left and alerts."""

from __future__ import annotations

import time
from typing import Any

from agent.playbook.types import format_duration
from agent.providers._budget import BudgetStore, decide
from agent.service import status as status_file
from agent.service.lock import holder


def gather(state_dir: str) -> dict[str, Any]:
    pid = holder(state_dir)
    doc = status_file.read(state_dir) or {}
    now = time.time()
    store = BudgetStore(state_dir)
    resources = doc.get("resources") or {}
    for ref, entry in resources.items():
        b = entry.get("restart")
        if not b:
            continue
        attempts = store.attempts(ref)
        recent = [t for t in attempts if t > now - b["within"]]
        v = decide(attempts, b["max"], b["within"], b["backoff"], now)
        entry["budget"] = {"used": len(recent), "max": b["max"],
                           "within": format_duration(b["within"]),
                           "left": max(b["max"] - len(recent), 0), "exhausted": v.exhausted,
                           "note": v.detail or (v.message if not v.allowed else "")}
    if isinstance(doc.get("collector"), dict):  # the outbox as it is now, not at the last write
        from agent.report.outbox import Outbox

        doc["collector"].update(Outbox(state_dir, "", "").stats())
    return {"running": pid is not None, "pid": pid or None, "state_dir": state_dir,
            "status": doc, "alerts": status_file.alerts(state_dir, 10)}


def _ago(t: float | None) -> str:
    if not t:
        return "never"
    s = max(0, round(time.time() - t))
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"


def render(g: dict[str, Any]) -> str:
    doc = g["status"]
    lines = []
    if g["running"]:
        lines.append(f"agent: running (pid {g['pid']}), state {g['state_dir']}")
    else:
        lines.append(f"agent: not running (state {g['state_dir']}"
                     + (f", last seen {_ago(doc.get('updated_at'))})" if doc else ")"))
    if not doc:
        return "\n".join(lines)
    lines.append(f"revision: {doc.get('revision') or 'none'}; last full reconcile "
                 f"{_ago(doc.get('last_full_reconcile'))} (every {doc.get('reconcile_interval')})")
    if rej := doc.get("rejected"):
        first = rej["message"].splitlines()[0] if rej.get("message") else ""
        lines.append(f"refused: {rej['revision']} ({_ago(rej.get('at'))}): {first}")
    if c := doc.get("collector"):
        line = (f"collector: {c['url']}: {c.get('depth', 0)} report(s) waiting"
                + (f", last sent {_ago(c['last_success'])}" if c.get("last_success") else ""))
        if c.get("last_error"):
            line += f"; failing ({c.get('consecutive_failures', 0)}x): {c['last_error']}"
        if c.get("dropped_total"):
            line += f"; {c['dropped_total']} dropped over the outbox cap (reported)"
        if c.get("parked"):
            line += f"; {c['parked']} refused by the collector (parked)"
        lines.append(line)
    resources = doc.get("resources") or {}
    if resources:
        width = max(len(r) for r in resources)
        lines.append("")
        for ref, e in sorted(resources.items()):
            b = e.get("budget")
            budget = ""
            if b:
                budget = (f"  [budget exhausted: {b['note']}]" if b["exhausted"]
                          else f"  [budget {b['left']}/{b['max']} left in {b['within']}]")
            lines.append(f"{ref:<{width}}  {e['status']:<7}  {_ago(e.get('at')):>8}  "
                         f"{e['message']}{budget}")
    lines.extend(_checks(doc))
    if g["alerts"]:
        lines.append("")
        lines.append("recent alerts:")
        for a in g["alerts"]:
            lines.append(f"  {_ago(a['at'])}: [{a['severity']}] {a['message']}")
    return "\n".join(lines)


def _checks(doc: dict[str, Any]) -> list[str]:
    """Checks with their health, alerts not inactive, the notifications waiting."""
    lines: list[str] = []
    checks = doc.get("checks") or {}
    if checks:
        width = max(len(n) for n in checks)
        lines += ["", f"checks: {doc.get('health', '?')}"]
        for name, c in sorted(checks.items()):
            lat = f"{c['latency_ms']:.0f} ms" if c.get("latency_ms") is not None else ""
            lines.append(f"  {name:<{width}}  {c['status']:<9}  {_ago(c.get('at')):>8}  "
                         f"{lat:>8}  {c['message']}")
    for a in doc.get("alerts") or []:
        if not lines or not lines[-1].startswith("alerts"):
            lines += ["", "alerts (ack with `opsagent alert ack ID`):"]
        ack = ", acknowledged" if a.get("acked") else ""
        told = ", notified " + ", ".join(a["notified"]) if a.get("notified") else ""
        lines.append(f"  {a.get('alert_id') or '-':<8}  {a['rule']}: {a['state']} since "
                     f"{_ago(a.get('since'))} [{a.get('severity')}] value {a.get('value')}"
                     f"{told}{ack}")
    watches = doc.get("watches") or {}
    if watches:
        lines += ["", "watches:"]
        for name, w in sorted(watches.items()):
            behind = f", {w['lag_s']:.0f} s behind" if w.get("lag_s", 0) >= 1 else ""
            lines.append(f"  {name:<24} {w['source']}: {w['lines']} lines, {w['matched']} "
                         f"matched, fired {w['fired']} times{behind}")
    n = doc.get("notifications") or {}
    if n.get("count"):
        lines += ["", f"notifications waiting: {n['count']}"
                  + (f"; last error: {n['last_error']}" if n.get("last_error") else "")]
    return lines
