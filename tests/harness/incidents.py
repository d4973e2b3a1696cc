"""A realistic incident record (the shape agent.fleet.orchestrate writes) for the tests of
the incident store, the post-incident report, the collector and the dashboard."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

START = dt.datetime(2026, 11, 23, 9, 31, 12, tzinfo=dt.UTC)

SOCKETS = """State  Recv-Q Send-Q Local Address:Port  Peer Address:Port Process
LISTEN 0      511          0.0.0.0:80         0.0.0.0:*     users:(("nginx",pid=812,fd=6))
ESTAB  0      0        10.0.0.11:80     203.0.113.7:51234 users:(("nginx",pid=813,fd=9))"""
NGINX_LOG = ("2026/11/23 09:30:58 [error] 813#813: *4412 upstream timed out (110: Connection "
             "timed out) while reading response header from upstream, client: 203.0.113.7\n"
             "2026/11/23 09:31:01 [error] 813#813: *4413 limiting requests | excess: 20.5 "
             "by zone \"perip\", client: 203.0.113.7\n")


def _at(seconds: float) -> str:
    return (START + dt.timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def sample_incident(ident: str = "INC-20261123-093112-3f2a", *, check: bool = False,
                    started: dt.datetime | None = None, status: str = "failed",
                    hosts: tuple[str, ...] = ("web01", "web02", "web03", "web04"),
                    ) -> dict[str, Any]:
    """Four web hosts: web01 blocked and restarted (changed), web02 failed at the restart and
    was rolled back, web03 already right, web04 unreachable; a snapshot on web01; two waves,
    a confirmation, a stop on max_fail_percentage."""
    w1, w2, w3, w4 = hosts
    base = (started or START) - START

    def at(s: float) -> str:
        return _at(s + base.total_seconds())

    outcomes = [
        {"host": w1, "step": 0, "name": "evidence", "action": "snapshot", "status": "ok",
         "message": "captured sockets, processes and 1 log", "started_at": at(3),
         "duration_s": 0.41, "evidence": {"sockets": SOCKETS, "processes": "PID  %CPU CMD\n"
                                          "813  97.0 nginx: worker process",
                                          "logs": {"/var/log/nginx/error.log": NGINX_LOG}}},
        {"host": w1, "step": 1, "name": "block the scraper", "action": "block_ip",
         "status": "changed", "message": "203.0.113.7 blocked until 2026-11-23 10:31:16 UTC",
         "started_at": at(4), "duration_s": 0.12, "evidence": None},
        {"host": w1, "step": 2, "name": "restart nginx", "action": "restart",
         "status": "changed", "message": "nginx restarted | active (running) since 09:31:17",
         "started_at": at(5), "duration_s": 1.8, "evidence": None},
        {"host": w2, "step": 0, "name": "evidence", "action": "snapshot", "status": "ok",
         "message": "captured sockets and processes", "started_at": at(20),
         "duration_s": 0.3, "evidence": None},
        {"host": w2, "step": 1, "name": "block the scraper", "action": "block_ip",
         "status": "changed", "message": "203.0.113.7 blocked until 2026-11-23 10:31:33 UTC",
         "started_at": at(21), "duration_s": 0.1, "evidence": None},
        {"host": w2, "step": 2, "name": "restart nginx", "action": "restart",
         "status": "failed",
         "message": "nginx failed to start:\nnginx: [emerg] bind() to 0.0.0.0:80 failed",
         "started_at": at(22), "duration_s": 30.0, "evidence": None},
        {"host": w2, "step": 1, "name": "block the scraper", "action": "block_ip",
         "status": "rolled-back", "message": "undone: unblocked 203.0.113.7",
         "started_at": at(52), "duration_s": 0.1, "evidence": None},
        {"host": w3, "step": 0, "name": "evidence", "action": "snapshot", "status": "ok",
         "message": "captured sockets and processes", "started_at": at(20.5),
         "duration_s": 0.3, "evidence": None},
        {"host": w3, "step": 1, "name": "block the scraper", "action": "block_ip",
         "status": "ok", "message": "203.0.113.7 already blocked", "started_at": at(21.5),
         "duration_s": 0.1, "evidence": None},
        {"host": w3, "step": 2, "name": "restart nginx", "action": "restart", "status": "ok",
         "message": "nginx is running", "started_at": at(22.5), "duration_s": 0.2,
         "evidence": None},
    ]
    doc: dict[str, Any] = {
        "id": ident,
        "runbook": {"name": "web-abuse", "path": "runbooks/web-abuse.yaml",
                    "revision": "sha256:9f2c4e1d0b7a", "description": "Block an abusive "
                    "client and restart nginx"},
        "title": "Block an abusive client and restart nginx",
        "by": "alice@laptop",
        "check": check,
        "params": {"ip": "203.0.113.7", "reason": "scraper | 20 req/s", "duration": "1h",
                   "notify": True},
        "inventory": "inventory.yaml", "limit": "web",
        "started_at": at(0), "finished_at": at(60),
        "status": status,
        "hosts": [
            {"name": w1, "status": "changed", "message": "3 steps: 2 changed"},
            {"name": w2, "status": "failed", "message": "restart nginx failed; rolled back"},
            {"name": w3, "status": "ok", "message": "nothing to change"},
            {"name": w4, "status": "unreachable",
             "message": "ssh: connect to 10.0.0.14:22: timed out"},
        ],
        "steps": [{"index": 0, "name": "evidence", "action": "snapshot"},
                  {"index": 1, "name": "block the scraper", "action": "block_ip"},
                  {"index": 2, "name": "restart nginx", "action": "restart"}],
        "outcomes": outcomes,
        "timeline": [
            {"at": at(1), "event": f"wave 1 of 2: {w1}"},
            {"at": at(2), "event": "confirmed: Block 203.0.113.7 on every web host?"},
            {"at": at(19), "event": f"wave 2 of 2: {w2}, {w3}, {w4}"},
            {"at": at(19.5), "event": f"{w4}: unreachable (ssh: connect to 10.0.0.14:22: "
                                      "timed out)"},
            {"at": at(59), "event": "stopped: 2 of 3 hosts failed (67% > "
                                    "max_fail_percentage 25%)"},
        ],
        "followups": ["Rate-limit /api/search per client", "Review nginx worker_connections"],
    }
    if check:
        for o in doc["outcomes"]:
            if o["status"] in ("changed", "rolled-back"):
                o["status"] = "would-change"
        for h in doc["hosts"]:
            if h["status"] == "changed":
                h["status"] = "would-change"
        doc["status"] = "checked"
    return copy.deepcopy(doc)
