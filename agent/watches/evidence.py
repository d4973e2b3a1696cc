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
        doc["sockets"] = _sockets(key)
    if processes:
        doc["processes"] = _processes()
    folder = os.path.join(state_dir, "evidence")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    path = os.path.join(folder, f"{time.strftime('%Y%m%dT%H%M%S')}-{doc['id'][:8]}.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh)
    doc["path"] = path
    return doc


def _sockets(key: str) -> list[dict[str, Any]]:
    import psutil

    try:
        address = str(ipaddress.ip_address(key))
    except ValueError:
        address = None
    out: list[dict[str, Any]] = []
    with contextlib.suppress(psutil.Error, OSError):
        for c in psutil.net_connections(kind="inet"):
            remote = c.raddr.ip if c.raddr else None
            if address is not None and remote != address:
                continue
            if address is None and c.status != psutil.CONN_ESTABLISHED:
                continue
            out.append({"local": f"{c.laddr.ip}:{c.laddr.port}" if c.laddr else None,
                        "remote": f"{remote}:{c.raddr.port}" if c.raddr else None,
                        "status": c.status, "pid": c.pid})
            if len(out) >= MAX_SOCKETS:
                break
    return out


def _processes() -> list[dict[str, Any]]:
    import psutil

    procs = []
    for p in psutil.process_iter(["pid", "name", "username", "cpu_times", "memory_info",
                                  "cmdline"]):
        info = p.info
        cpu = info.get("cpu_times")
        mem = info.get("memory_info")
        procs.append({"pid": info["pid"], "name": info.get("name"),
                      "user": info.get("username"),
                      "cpu_s": round(cpu.user + cpu.system, 2) if cpu else None,
                      "rss": mem.rss if mem else None,
                      "cmdline": " ".join(info.get("cmdline") or [])[:300]})
    procs.sort(key=lambda d: (d["cpu_s"] or 0.0), reverse=True)
    return procs[:MAX_PROCESSES]
