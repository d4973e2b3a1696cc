"""The dashboard: server-rendered pages (Jinja2, autoescaped), no front-end build.

``/`` the fleet (problems first), ``/hosts/{host}`` one host's resources, recurring drift,
timeline and alerts, ``/alerts`` the alert events. Host names are validated at the token,
but resource names, kinds and messages come from agents as they are: every value is shown
as text, never markup, and the pages carry a Content-Security-Policy that runs no script at
all, so an escaping slip still could not execute anything.

The store calls are synchronous: the routes are plain ``def`` so FastAPI runs them in its
threadpool instead of blocking the event loop that ingest shares.
"""

from __future__ import annotations

import datetime as dt
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


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES),
                      autoescape=select_autoescape(["html"], default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["ago"] = ago
    env.filters["iso"] = iso
    env.filters["span"] = span
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
        alerts = store.alerts(limit=ALERTS_COUNTED)
        since = time.time() - RECENT_S
        recent = sum(1 for a in alerts if a["at"] >= since)
        return page("fleet.html", hosts=hosts, alerts=alerts[:ALERTS_ON_FLEET],
                    totals={"hosts": len(hosts), "stale": sum(h["stale"] for h in hosts),
                            "failing": sum(h["failing"] for h in hosts),
                            "alerts": f"{recent}+" if recent == ALERTS_COUNTED else recent},
                    stale_after=stale_after, collector_url=str(request.base_url).rstrip("/"))

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
