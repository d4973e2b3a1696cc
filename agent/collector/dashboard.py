"""The dashboard: server-rendered pages (Jinja2, autoescaped), no front-end build.

``/`` the fleet (problems first), ``/hosts/{host}`` one host's resources, recurring drift,
timeline and alerts, ``/alerts`` the alert events, ``/incidents`` the runbook runs and
``/incidents/{id}`` one run: its hosts, each step's outcome per host, the timeline and the
evidence. Host names are validated at the token,
but resource names, kinds and messages come from agents as they are: every value is shown
as text, never markup, and the pages carry a Content-Security-Policy that runs no script at
all, so an escaping slip still could not execute anything.

The store calls are synchronous: the routes are plain ``def`` so FastAPI runs them in its
threadpool instead of blocking the event loop that ingest shares.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from agent import __version__
from agent.collector.store import Store

TEMPLATES = os.path.join(os.path.dirname(__file__), "templates")
RECENT_S = 86400.0  # "recent alerts" on the fleet page: the last 24 h
ALERTS_COUNTED = 200  # alerts read to count the recent ones; past it the card says "200+"
ALERTS_ON_FLEET = 10
INCIDENTS_LISTED = 200
INCIDENTS_ON_FLEET = 5
# No script runs on these pages; styles are one inline block. Nothing may frame them.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def span(seconds: float) -> str:
    """A length of time as people say it: '12 s', '5 min', '3 h', '2 d'."""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h"
    return f"{s // 86400} d"


def ago(ts: float | None, now: float | None = None) -> str:
    """'12 s ago', '5 min ago'; a time ahead of ours (an agent's clock runs fast) reads
    '0 s ago' rather than a negative age."""
    if not ts:
        return "never"
    return span((time.time() if now is None else now) - ts) + " ago"


def iso(ts: float | None) -> str:
    if not ts:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        t = dt.datetime.fromisoformat(iso)
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp()


def utc(ts: float | None) -> str:
    """YYYY-MM-DD HH:MM:SS UTC of an epoch time."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else ""


def clock(ts: float | None) -> str:
    """HH:MM:SS UTC of an epoch time."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%H:%M:%S") if ts else ""


def incident_view(doc: dict[str, Any]) -> dict[str, Any]:
    """What the incident page shows: the hosts × steps grid of outcomes (a host may have
    several outcomes for one step: it ran, then was rolled back), the timeline (the run's
    events and every outcome, in time order) and the evidence."""
    outcomes = doc["outcomes"]
    steps = {s["index"]: s for s in doc["steps"]}
    for o in outcomes:  # a step only the outcomes name
        steps.setdefault(o["step"], {"index": o["step"], "name": o["name"],
                                     "action": o["action"]})
    hosts = list(doc["hosts"])
    known = {h["name"] for h in hosts}
    for name in dict.fromkeys(o["host"] for o in outcomes if o["host"] not in known):
        hosts.append({"name": name, "status": "unknown", "message": ""})
    grid: dict[str, dict[int, list[dict[str, Any]]]] = {h["name"]: {} for h in hosts}
    for o in outcomes:
        grid[o["host"]].setdefault(o["step"], []).append(o)
    start, end = _epoch(doc["started_at"]), _epoch(doc.get("finished_at"))
    marked = {_epoch(e["at"]) for e in doc["timeline"]}  # the run's own events may say it
    rows: list[dict[str, Any]] = []
    if start not in marked:
        rows.append({"at": start, "order": 0, "text": "started by " + doc["by"]
                     + (" (dry run)" if doc["check"] else "")})
    rows += [{"at": _epoch(e["at"]) or start, "order": 1, "text": e["event"]}
             for e in doc["timeline"]]
    rows += [{"at": _epoch(o["started_at"]) or start, "order": 1, "outcome": o,
              "step_name": steps[o["step"]]["name"]} for o in outcomes]
    if end is not None and end not in marked:
        rows.append({"at": end, "order": 2, "text": f"finished: {doc['status']}"})
    rows.sort(key=lambda r: (r["at"] or 0.0, r["order"]))
    counts: dict[str, int] = {}
    for h in hosts:
        counts[h["status"]] = counts.get(h["status"], 0) + 1
    evidence = [(o, _blocks(o["evidence"])) for o in outcomes if o.get("evidence")]
    return {"steps": [steps[i] for i in sorted(steps)], "hosts": hosts, "grid": grid,
            "timeline": rows, "counts": counts, "evidence": evidence,
            "duration": span(end - start) if end is not None and start is not None else None}


def _blocks(evidence: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) per piece of evidence: text as it is, a {name: text} map (log tails) a
    block per name, anything else as JSON."""
    out: list[tuple[str, str]] = []
    for key, value in evidence.items():
        if isinstance(value, str):
            out.append((key, value))
        elif isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            out += [(f"{key}: {name}", text) for name, text in value.items()]
        else:
            out.append((key, json.dumps(value, indent=2, default=str)))
    return out


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES),
                      autoescape=select_autoescape(["html"], default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["ago"] = ago
    env.filters["iso"] = iso
    env.filters["span"] = span
    env.filters["clock"] = clock
    env.filters["utc"] = utc
    env.filters["epoch"] = _epoch
    env.globals["version"] = __version__
    return env


def _problems_first(host: dict[str, Any]) -> tuple[bool, str]:
    """Problems first (stopped reporting or failing resources), then by name."""
    return (not (host["stale"] or host["failing"]), host["name"])


def add_dashboard(app: FastAPI, store: Store, *, stale_after: float) -> None:
    env = _env()

    def page(name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        html = env.get_template(name).render(now=time.time(), **ctx)
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    def fleet(request: Request) -> HTMLResponse:
        hosts = sorted(store.hosts(stale_after), key=_problems_first)
        incidents = store.incidents(limit=INCIDENTS_ON_FLEET)
        alerts = store.alerts(limit=ALERTS_COUNTED)
        since = time.time() - RECENT_S
        recent = sum(1 for a in alerts if a["at"] >= since)
        return page("fleet.html", hosts=hosts, alerts=alerts[:ALERTS_ON_FLEET],
                    totals={"hosts": len(hosts), "stale": sum(h["stale"] for h in hosts),
                            "failing": sum(h["failing"] for h in hosts),
                            "alerts": f"{recent}+" if recent == ALERTS_COUNTED else recent},
                    stale_after=stale_after, collector_url=str(request.base_url).rstrip("/"),
                    incidents=incidents)

    @app.get("/hosts/{host}", include_in_schema=False, response_class=HTMLResponse)
    def host_page(host: str) -> HTMLResponse:
        doc = store.host(host, stale_after)
        if doc is None:
            return page("missing.html", 404, host=host)
        return page("host.html", host=doc, timeline=store.timeline(host),
                    alerts=store.alerts(limit=50, host=host), stale_after=stale_after)

    @app.get("/alerts", include_in_schema=False, response_class=HTMLResponse)
    def alerts_page() -> HTMLResponse:
        return page("alerts.html", alerts=store.alerts(limit=ALERTS_COUNTED), limit=ALERTS_COUNTED)

    @app.get("/incidents", include_in_schema=False, response_class=HTMLResponse)
    def incidents_page() -> HTMLResponse:
        return page("incidents.html", incidents=store.incidents(limit=INCIDENTS_LISTED),
                    limit=INCIDENTS_LISTED)

    @app.get("/incidents/{incident}", include_in_schema=False, response_class=HTMLResponse)
    def incident_page(incident: str) -> HTMLResponse:
        doc = store.incident(incident)
        if doc is None:
            return page("missing_incident.html", 404, incident=incident)
        return page("incident.html", inc=doc, view=incident_view(doc))
