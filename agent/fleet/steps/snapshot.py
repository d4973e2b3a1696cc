"""``snapshot:``: evidence for the incident record: sockets, the busiest processes (by CPU time
and by memory) and log tails of units (journalctl), containers (the Docker API) and files.

It changes nothing, so it runs under ``--check`` too. A unit, container or file that is not
there is noted in its place, never a failure. The whole is bounded by ``EVIDENCE_CAP``: every
text gets an equal share of its bytes, a log keeping its newest lines. Like a watch's snapshot
(agent.watches.evidence), it is also written to ``STATE_DIR/evidence/`` (0600).
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
import uuid
from typing import Any

from agent.fleet.models import SnapshotStep
from agent.fleet.steps.base import EVIDENCE_CAP, StepContext, StepResult

JOURNAL_TIMEOUT_S = 15.0
CPU_SAMPLE_S = 0.5  # CPU use is measured over this long: what burns CPU now, not since boot
_MARGIN = 4096  # for the JSON around the texts
_CUT = "[... {n} bytes cut ...]\n"


def run(spec: SnapshotStep, ctx: StepContext) -> StepResult:
    from agent.watches import evidence as ev

    share = (EVIDENCE_CAP - _MARGIN) // max(1, int(spec.sockets) + int(spec.processes)
                                            + len(spec.units) + len(spec.containers)
                                            + len(spec.files))
    out: dict[str, Any] = {}
    missing: list[str] = []
    sockets = ev.read_sockets(listening=True) if spec.sockets else []
    if spec.sockets:
        out["sockets"] = _cut_tail(_sockets_text(sockets), share)
    if spec.processes:
        procs = ev.read_processes(sample_s=min(CPU_SAMPLE_S, ctx.remaining(CPU_SAMPLE_S)))
        out["processes"] = _cut_tail(_processes_text(procs), share)
    logs: dict[str, str] = {}
    for unit in spec.units:
        logs[f"unit:{unit}"] = read_unit_tail(unit, spec.lines, ctx.remaining(JOURNAL_TIMEOUT_S))
    logs.update(read_container_tails(spec.containers, spec.lines, ctx.state_dir))
    for path in spec.files:
        logs[f"file:{path}"] = read_file_tail(path, spec.lines, share)
    for key, text in logs.items():
        if text.startswith("(not captured"):
            missing.append(key)
        logs[key] = _cut_head(text, share)
    if logs:
        out["logs"] = logs
    saved = _save(out, ctx)
    parts = ([f"{len(sockets)} sockets"] if spec.sockets else []) + (
        ["the busiest processes"] if spec.processes else []) + (
        [f"{len(logs) - len(missing)} log tails"] if logs else [])
    text = "captured " + (", ".join(parts) or "nothing (nothing asked)")
    if missing:
        text += f"; not found: {', '.join(missing)}"
    return StepResult("ok", text + saved, evidence=out)


def read_unit_tail(unit: str, lines: int, timeout: float) -> str:
    """The unit's last journal lines (an argv list; getopt takes `unit` as -u's value even
    when it starts with a dash)."""
    argv = ["journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "short-iso"]
    try:
        p = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                           timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return "(not captured: journalctl is not installed)"
    except subprocess.TimeoutExpired:
        return f"(not captured: journalctl did not finish within {timeout:.0f}s)"
    if p.returncode != 0:
        return f"(not captured: journalctl exit {p.returncode}: {p.stderr.strip()[:500]})"
    if p.stdout.strip() in ("", "-- No entries --"):
        return f"(not captured: no journal entries for unit {unit}; is it installed?)"
    return p.stdout


def read_container_tails(names: list[str], lines: int, state_dir: str) -> dict[str, str]:
    """Each container's last log lines with their timestamps, through the Docker API."""
    if not names:
        return {}
    from agent.errors import ProviderError
    from agent.providers import _docker_client as dc

    def tails(client: Any) -> dict[str, str]:
        import docker.errors

        out = {}
        for name in names:
            try:
                raw = client.api.logs(name, tail=lines, timestamps=True)
                out[f"container:{name}"] = raw.decode(errors="replace") or "(no log output)\n"
            except docker.errors.NotFound:
                out[f"container:{name}"] = f"(not captured: no container {name} on this host)"
            except docker.errors.APIError as e:
                out[f"container:{name}"] = f"(not captured: {dc.api_message(e)})"
        return out

    try:
        return dc.call(state_dir, "reading container logs", tails)
    except ProviderError as e:
        return {f"container:{n}": f"(not captured: {e})" for n in names}


def read_file_tail(path: str, lines: int, max_bytes: int) -> str:
    """The file's last `lines` lines, read backwards from its end in blocks (never the whole
    file), at most `max_bytes` of them; only a regular file is read (never a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        return f"(not captured: {e.strerror or e})"
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "(not captured: not a regular file)"
        pos = fh.seek(0, os.SEEK_END)
        data = b""
        while pos > 0 and data.count(b"\n") <= lines and len(data) < max_bytes:
            step = min(64 * 1024, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data
    kept = data.splitlines(keepends=True)[-lines:]
    return b"".join(kept).decode(errors="replace")


def _sockets_text(sockets: list[dict[str, Any]]) -> str:
    names = _process_names({s["pid"] for s in sockets if s.get("pid")})
    rows = [f"{'STATE':<12} {'LOCAL':<40} {'REMOTE':<40} PROCESS"]
    for s in sockets:
        who = f"{s['pid']}/{names.get(s['pid'], '?')}" if s.get("pid") else "-"
        rows.append(f"{s['status']:<12} {s['local'] or '-':<40} {s['remote'] or '-':<40} {who}")
    return "\n".join(rows) + "\n"


def _process_names(pids: set[int]) -> dict[int, str]:
    import psutil

    out = {}
    for pid in pids:
        try:
            out[pid] = psutil.Process(pid).name()
        except psutil.Error:
            continue
    return out


def _processes_text(procs: list[dict[str, Any]]) -> str:
    from agent.watches.evidence import busiest

    text = ""
    for by, title in (("cpu_percent", f"busiest by CPU now (over {CPU_SAMPLE_S:g}s)"),
                      ("rss", "busiest by memory (RSS)")):
        text += (f"{title}:\n{'PID':>7} {'USER':<12} {'CPU%':>6} {'CPU_S':>10} {'RSS_MIB':>9}"
                 " COMMAND\n")
        for p in busiest(procs, by):
            pct = f"{p['cpu_percent']:.1f}" if p.get("cpu_percent") is not None else "?"
            cpu = p["cpu_s"] if p["cpu_s"] is not None else "?"
            rss = f"{p['rss'] / 2**20:.1f}" if p["rss"] is not None else "?"
            text += (f"{p['pid']:>7} {str(p['user'] or '?')[:12]:<12} {pct:>6} {cpu:>10} "
                     f"{rss:>9} {p['cmdline'] or '[' + str(p['name']) + ']'}\n")
        text += "\n"
    return text


def _cut_head(text: str, limit: int) -> str:
    """At most `limit` bytes, keeping the end (a log's newest lines)."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    keep = raw[len(raw) - max(limit - 64, 0):]
    return _CUT.format(n=len(raw) - len(keep)) + keep.decode(errors="ignore")


def _cut_tail(text: str, limit: int) -> str:
    """At most `limit` bytes, keeping the beginning (a table's header and top rows)."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    keep = raw[:max(limit - 64, 0)]
    return keep.decode(errors="ignore") + "\n" + _CUT.format(n=len(raw) - len(keep))


def _save(out: dict[str, Any], ctx: StepContext) -> str:
    """Written as a watch's snapshot is; its path goes in the evidence and the message."""
    from agent.watches.evidence import write_evidence

    doc = {"id": str(uuid.uuid4()), "incident": ctx.incident, "host": ctx.host,
           "at": time.time(), "snapshot": out}
    try:
        out["path"] = write_evidence(ctx.state_dir, doc)
    except OSError as e:
        return f" (not saved in {ctx.state_dir}: {e.strerror or e})"
    return f"; saved in {out['path']}"
