"""The dashboard: server-rendered pages (Jinja2, autoescaped), no front-end build.

``/`` the fleet (problems first), ``/hosts/{host}`` one host's resources, recurring drift,
timeline and alerts, ``/alerts`` the alert events. Names come from agents and are shown as
text, never markup.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from agent import __version__
from agent.collector.store import Store

TEMPLATES = os.path.join(os.path.dirname(__file__), "templates")


def ago(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "never"
    s = max(0, int((now or time.time()) - ts))
    if s < 120:
        return f"{s} s ago"
    if s < 7200:
        return f"{s // 60} min ago"
    if s < 172800:
        return f"{s // 3600} h ago"
    return f"{s // 86400} d ago"


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
    env.globals["version"] = __version__
    return env


def add_dashboard(app: FastAPI, store: Store, *, stale_after: float) -> None:
    env = _env()

    def page(name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        html = env.get_template(name).render(now=time.time(), **ctx)
        return HTMLResponse(html, status_code=status)

    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    def fleet() -> HTMLResponse:
        hosts = store.hosts(stale_after)
        hosts.sort(key=lambda h: (not (h["stale"] or h["failing"]), h["name"]))
        alerts = store.alerts(limit=10)
        since = time.time() - 86400
        return page("fleet.html", hosts=hosts, alerts=alerts,
                    totals={"hosts": len(hosts), "stale": sum(h["stale"] for h in hosts),
                            "failing": sum(h["failing"] for h in hosts),
                            "alerts": sum(1 for a in alerts if a["at"] >= since)},
                    stale_after=stale_after)

    @app.get("/hosts/{host}", include_in_schema=False, response_class=HTMLResponse)
    def host_page(host: str) -> HTMLResponse:
        doc = store.host(host, stale_after)
        if doc is None:
            return page("missing.html", 404, host=host)
        return page("host.html", host=doc, timeline=store.timeline(host),
                    alerts=store.alerts(limit=50, host=host))

    @app.get("/alerts", include_in_schema=False, response_class=HTMLResponse)
    def alerts_page() -> HTMLResponse:
        return page("alerts.html", alerts=store.alerts(limit=200))
