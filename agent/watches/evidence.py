"""The ``snapshot`` response: evidence taken when a watch fires, for the incident record.

What is kept: the watch's matching lines for the key (the newest ``lines``), the sockets
to or from the key's address (all established ones when the key is not an address), and
the busiest processes. It is written to ``STATE_DIR/evidence/`` (0600, one JSON file per
firing) and a bounded copy goes into the response report.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import time
import uuid
from typing import Any

MAX_PROCESSES = 25
MAX_SOCKETS = 200
MAX_LINE = 2048


def take(state_dir: str, watch: str, key: str, lines: list[str], *, sockets: bool,
         processes: bool) -> dict[str, Any]:
    """Gather the evidence and write it down; the document (with its ``id`` and ``path``)."""
    doc: dict[str, Any] = {"id": str(uuid.uuid4()), "watch": watch, "key": key,
                           "at": time.time(), "lines": [ln[:MAX_LINE] for ln in lines]}
    if sockets:
        doc["sockets"] = read_sockets(key)
    if processes:
        doc["processes"] = busiest(read_processes())
    doc["path"] = write_evidence(state_dir, doc)
    return doc


def write_evidence(state_dir: str, doc: dict[str, Any]) -> str:
    """``doc`` (which has an ``id``) as a new file in STATE_DIR/evidence/, 0600; its path."""
    folder = os.path.join(state_dir, "evidence")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    path = os.path.join(folder, f"{time.strftime('%Y%m%dT%H%M%S')}-{doc['id'][:8]}.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh)
    return path


def read_sockets(key: str = "", *, listening: bool = False) -> list[dict[str, Any]]:
    """The sockets to or from the address `key`; else every established one (and, with
    `listening`, every listening one)."""
    import psutil

    try:
        address = str(ipaddress.ip_address(key))
    except ValueError:
        address = None
    wanted = {psutil.CONN_ESTABLISHED} | ({psutil.CONN_LISTEN} if listening else set())
    out: list[dict[str, Any]] = []
    with contextlib.suppress(psutil.Error, OSError):
        for c in psutil.net_connections(kind="inet"):
            remote = c.raddr.ip if c.raddr else None
            if address is not None and remote != address:
                continue
            if address is None and c.status not in wanted:
                continue
            out.append({"local": f"{c.laddr.ip}:{c.laddr.port}" if c.laddr else None,
                        "remote": f"{remote}:{c.raddr.port}" if c.raddr else None,
                        "status": c.status, "pid": c.pid})
            if len(out) >= MAX_SOCKETS:
                break
    return out


def read_processes(sample_s: float = 0.0) -> list[dict[str, Any]]:
    """Every process: pid, name, user, cpu_s (CPU time used so far), rss, cmdline; with
    `sample_s`, also cpu_percent: its use of one CPU over that many seconds, now."""
    import psutil

    live = list(psutil.process_iter(["pid", "name", "username", "cpu_times", "memory_info",
                                     "cmdline"]))
    percent: dict[int, float] = {}
    if sample_s > 0:
        for p in live:
            with contextlib.suppress(psutil.Error):
                p.cpu_percent(None)
        time.sleep(sample_s)
        for p in live:
            with contextlib.suppress(psutil.Error):
                percent[p.pid] = p.cpu_percent(None)
    procs = []
    for p in live:
        info = p.info
        cpu = info.get("cpu_times")
        mem = info.get("memory_info")
        doc = {"pid": info["pid"], "name": info.get("name"), "user": info.get("username"),
               "cpu_s": round(cpu.user + cpu.system, 2) if cpu else None,
               "rss": mem.rss if mem else None,
               "cmdline": " ".join(info.get("cmdline") or [])[:300]}
        if sample_s > 0:
            doc["cpu_percent"] = percent.get(info["pid"])
        procs.append(doc)
    return procs


def busiest(procs: list[dict[str, Any]], by: str = "cpu_s", limit: int = MAX_PROCESSES
            ) -> list[dict[str, Any]]:
    """The `limit` processes with the most `by` (cpu_s, cpu_percent or rss)."""
    return sorted(procs, key=lambda d: d.get(by) or 0, reverse=True)[:limit]
