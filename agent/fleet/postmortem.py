"""The post-incident report of an incident record, in Markdown.

Shaped like the postmortem templates incident teams use (PagerDuty's, Atlassian's): a title
with the incident id; Summary; Impact; a UTC Timeline; Actions taken (per step, each host's
outcome); Evidence; Follow-ups as task items; Root cause and Lessons learned left for people
to write. Everything the record knows is filled in; nothing is invented.

All text from the record (host names, messages, evidence) is data: table cells are escaped
(pipes, backslashes, newlines, ``<``), list items are kept on one line, and evidence goes in
fenced code blocks whose fence is longer than any run of backticks inside.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable
from typing import Any

from agent.fleet.incidents import epoch_of

EVIDENCE_LINES = 120  # per block; past it the block is cut, with a note
EVIDENCE_CHARS = 8000
TBW = "_to be written_"
_PROBLEMS = ("failed", "unreachable")


def render_markdown(doc: dict[str, Any]) -> str:
    """The post-incident report of ``doc`` (an incident record, agent.fleet.incidents)."""
    parts = [_title(doc), _summary(doc), _impact(doc), _timeline(doc), _actions(doc),
             _evidence(doc), _followups(doc),
             f"## Root cause\n\n{TBW}\n", f"## Lessons learned\n\n{TBW}\n"]
    return "\n".join(parts)


# --- sections -------------------------------------------------------------------------------

def _title(doc: dict[str, Any]) -> str:
    return (f"# Incident {_line(doc.get('id', '?'))}: {_line(doc.get('title', ''))}\n\n"
            f"_Post-incident report of a runbook run, written by opsagent from the incident "
            f"record; the sections Root cause and Lessons learned are for people to write._\n")


def _summary(doc: dict[str, Any]) -> str:
    rb = doc.get("runbook") or {}
    started, finished = epoch_of(doc.get("started_at")), epoch_of(doc.get("finished_at"))
    took = (duration(finished - started) if started is not None and finished is not None
            else "still running" if doc.get("status") == "running" else "unknown")
    revision = f", revision `{_code(rb['revision'])}`" if rb.get("revision") else ""
    lines = [
        "## Summary", "",
        f"- **Runbook:** {_line(rb.get('name', '?'))} (`{_code(rb.get('path', ''))}`"
        f"{revision})",
        f"- **Operator:** {_line(doc.get('by', '?'))}",
        f"- **Started:** {when(doc.get('started_at'))}",
        f"- **Finished:** {when(doc.get('finished_at')) if doc.get('finished_at') else '—'}",
        f"- **Duration:** {took}",
        f"- **Status:** {_line(doc.get('status', '?'))}",
        f"- **Dry run:** {'yes (--check): nothing was changed' if doc.get('check') else 'no'}",
    ]
    if doc.get("inventory") or doc.get("limit"):
        lines.append(f"- **Inventory:** {_line(doc.get('inventory') or '—')}"
                     + (f", limited to {_line(doc['limit'])}" if doc.get("limit") else ""))
    if rb.get("description") and rb["description"] != doc.get("title"):
        lines += ["", _line(rb["description"])]
    params = doc.get("params") or {}
    lines += ["", "### Parameters", ""]
    if params:
        lines += ["| parameter | value |", "|---|---|"]
        lines += [f"| {cell(k)} | {cell(_value(v))} |" for k, v in params.items()]
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def _impact(doc: dict[str, Any]) -> str:
    hosts = doc.get("hosts") or []
    by_status: dict[str, list[str]] = {}
    for h in hosts:
        by_status.setdefault(str(h.get("status")), []).append(str(h.get("name")))
    lines = ["## Impact", "", f"- **Hosts targeted:** {len(hosts)}"
             + (f" ({_names(h.get('name') for h in hosts)})" if hosts else "")]
    for status, label in (("changed", "Changed"), ("would-change", "Would change (dry run)"),
                          ("failed", "Failed"), ("unreachable", "Unreachable"),
                          ("ok", "Already right (no change)"), ("skipped", "Skipped")):
        names = by_status.get(status, [])
        if names or status in ("changed", "failed", "unreachable"):
            lines.append(f"- **{label}:** {len(names)}"
                         + (f" ({_names(names)})" if names else ""))
    changed = [o for o in doc.get("outcomes") or []
               if o.get("status") in ("changed", "would-change", "rolled-back")]
    lines += ["", "### What changed" if not doc.get("check") else "### What would change", ""]
    if changed:
        lines += [f"- {_line(o.get('host'))}: step {_n(o.get('step'))} {_line(o.get('name'))} "
                  f"({_line(o.get('action'))}): {_line(o.get('status'))} — "
                  f"{_line(o.get('message'))}" for o in changed]
    else:
        lines.append("Nothing was changed on any host." if not doc.get("check")
                     else "Nothing would change on any host.")
    return "\n".join(lines) + "\n"


def _timeline(doc: dict[str, Any]) -> str:
    events: list[tuple[float, int, str]] = []
    rb = (doc.get("runbook") or {}).get("name", "?")
    start, end = epoch_of(doc.get("started_at")), epoch_of(doc.get("finished_at"))
    marked = {epoch_of(e.get("at")) for e in doc.get("timeline") or []}
    if start is not None and start not in marked:  # the record's own events may say it
        dry = " (dry run)" if doc.get("check") else ""
        events.append((start, 0, f"runbook {rb} started by {doc.get('by', '?')}{dry}"))
    for e in doc.get("timeline") or []:
        events.append((_at(e.get("at"), start), 1, str(e.get("event", ""))))
    for o in doc.get("outcomes") or []:
        events.append((_at(o.get("started_at"), start), 1,
                       f"{o.get('host')}: step {_n(o.get('step'))} {o.get('name')} "
                       f"({o.get('action')}): {_status(o)} — {o.get('message', '')}"))
    if end is not None and end not in marked:
        events.append((end, 2, f"run finished: {doc.get('status')}"))
    events.sort(key=lambda e: (e[0], e[1]))  # stable: same-time events keep their order
    days = {_day(t) for t, _, _ in events}
    one_day = len(days) == 1
    head = f"All times UTC, on {next(iter(days))}." if one_day and events else "All times UTC."
    lines = ["## Timeline", "", head, "", "| time (UTC) | event |", "|---|---|"]
    lines += [f"| {_clock(t, one_day)} | {cell(text)} |" for t, _, text in events]
    if not events:
        lines.append("| — | nothing was recorded |")
    return "\n".join(lines) + "\n"


def _actions(doc: dict[str, Any]) -> str:
    outcomes = doc.get("outcomes") or []
    hosts = [str(h.get("name")) for h in doc.get("hosts") or []]
    host_msg = {str(h.get("name")): h for h in doc.get("hosts") or []}
    steps = {int(s.get("index", 0)): s for s in doc.get("steps") or []}
    for o in outcomes:  # a step only the outcomes name
        steps.setdefault(int(o.get("step", 0)), {"index": o.get("step"), "name": o.get("name"),
                                                  "action": o.get("action")})
    lines = ["## Actions taken", ""]
    if not steps:
        lines.append("No step ran.")
    for index in sorted(steps):
        s = steps[index]
        lines += [f"### Step {index + 1}: {_line(s.get('name'))} (`{_code(s.get('action'))}`)", "",
                  "| host | status | message |", "|---|---|---|"]
        mine = [o for o in outcomes if int(o.get("step", -1)) == index]
        done = {str(o.get("host")) for o in mine}
        for o in mine:
            took = f" ({duration(float(o['duration_s']))})" if o.get("duration_s") else ""
            lines.append(f"| {cell(o.get('host'))} | {cell(_status(o))} | "
                         f"{cell(str(o.get('message', '')) + took)} |")
        for name in hosts:
            if name not in done:
                h = host_msg[name]
                why = (f"{h.get('status')}: {h.get('message', '')}"
                       if h.get("status") in _PROBLEMS else "")
                lines.append(f"| {cell(name)} | not run | {cell(why)} |")
        lines.append("")
    return "\n".join(lines)


def _evidence(doc: dict[str, Any]) -> str:
    lines = ["## Evidence", ""]
    found = [o for o in doc.get("outcomes") or [] if o.get("evidence")]
    if not found:
        return "\n".join([*lines, "No evidence was captured (a runbook's `snapshot` step "
                          "captures sockets, processes and log tails).", ""])
    for o in found:
        lines += [f"### {_line(o.get('host'))} · step {_n(o.get('step'))}: "
                  f"{_line(o.get('name'))}", ""]
        for label, text in _blocks(o["evidence"]):
            lines += [f"**{_line(label)}**", "", *_fenced(text, doc.get("id", "ID")), ""]
    return "\n".join(lines)


def _followups(doc: dict[str, Any]) -> str:
    items = [str(f) for f in doc.get("followups") or []]
    outcomes = doc.get("outcomes") or []
    for h in doc.get("hosts") or []:
        name, status = h.get("name"), h.get("status")
        if status == "failed":
            bad = next((o for o in outcomes if o.get("host") == name
                        and o.get("status") == "failed"), None)
            what = (f"step {_n(bad.get('step'))} {bad.get('name')} failed: {bad.get('message')}"
                    if bad else f"it failed: {h.get('message', '')}")
            items.append(f"Investigate {name}: {what}")
        elif status == "unreachable":
            items.append(f"Investigate {name}: it was unreachable ({h.get('message', '')}); "
                         "the runbook did not run there")
    undone = {(o.get("host"), o.get("step")) for o in outcomes
              if o.get("status") == "rolled-back"}
    for o in outcomes:
        if (o.get("action") == "block_ip" and o.get("status") == "changed"
                and (o.get("host"), o.get("step")) not in undone):
            expiry = _expiry(o)
            items.append(f"The block on {o.get('host')} (step {_n(o.get('step'))}: "
                         f"{o.get('message', '')}) is temporary and expires on its own"
                         f"{f' at {expiry}' if expiry else ''}: decide whether it should "
                         "stay (a log watch or a permanent firewall rule)")
    for host in dict.fromkeys(o.get("host") for o in outcomes
                              if o.get("status") == "rolled-back"):
        steps = [f"{_n(o.get('step'))} {o.get('name')}" for o in outcomes
                 if o.get("host") == host and o.get("status") == "rolled-back"]
        items.append(f"{host} was rolled back (undone: step {', '.join(steps)}): find out "
                     "why the run failed there before running the runbook on it again")
    if doc.get("status") == "aborted":
        items.append("The run was aborted before it finished: check the hosts it did not "
                     "reach and whether they need the runbook")
    if doc.get("check") and any(o.get("status") == "would-change" for o in outcomes):
        items.append("This was a dry run: run the runbook without --check to act")
    lines = ["## Follow-ups", ""]
    lines += [f"- [ ] {_line(i)}" for i in dict.fromkeys(items)] or ["None."]
    return "\n".join(lines) + "\n"


# --- formatting ------------------------------------------------------------------------------

def cell(value: Any) -> str:
    """Text in a Markdown table cell: escaped as on a line, pipes too, line breaks as
    ``<br>`` (the one tag a cell holds)."""
    text = _escape("" if value is None else str(value)).replace("|", "\\|")
    return re.sub(r"\r\n|\r|\n", "<br>", text).strip()


def _line(value: Any) -> str:
    """Text on one line of Markdown (a heading, a list item): line breaks as spaces; what
    would be markup (emphasis, links, code, HTML) escaped, so it shows as written."""
    return _escape(" ".join(("" if value is None else str(value)).split()))


def _escape(text: str) -> str:
    return re.sub(r"([\\`*\[\]])", r"\\\1", text).replace("<", "&lt;")


def _code(value: Any) -> str:
    """Text inside a `code span` (on one line; a backtick would end the span)."""
    return " ".join(("" if value is None else str(value)).split()).replace("`", "'")


def _names(names: Iterable[Any]) -> str:
    return ", ".join(_line(n) for n in names)


def _status(o: dict[str, Any]) -> str:
    """An outcome's status; a failure the runbook lets pass (on_failure: continue) says so."""
    return f"{o.get('status')}{' (ignored)' if o.get('ignored') else ''}"


def _n(index: Any) -> Any:
    """A step's number as people count (the record's index counts from 0)."""
    return index + 1 if isinstance(index, int) else index


def _value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def duration(seconds: float) -> str:
    """'850 ms', '12.3 s', '4 min 3 s', '2 h 5 min'."""
    if seconds < 1:
        return f"{max(0.0, seconds) * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def when(iso: str | None) -> str:
    """An ISO time as 'YYYY-MM-DD HH:MM:SS UTC' (as given when it does not parse)."""
    t = epoch_of(iso)
    if t is None:
        return _line(iso) or "—"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _at(iso: str | None, fallback: float | None) -> float:
    t = epoch_of(iso)
    return t if t is not None else (fallback or 0.0)


def _day(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d")


def _clock(t: float, time_only: bool) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime(
        "%H:%M:%S" if time_only else "%Y-%m-%d %H:%M:%S")


def _blocks(evidence: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) per piece of evidence: strings as they are, {name: text} maps (logs)
    one block per name, anything else as JSON."""
    out: list[tuple[str, str]] = []
    for key, value in evidence.items():
        if isinstance(value, str):
            out.append((str(key), value))
        elif isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            out += [(f"{key}: {name}", text) for name, text in value.items()]
        else:
            out.append((str(key), json.dumps(value, indent=2, default=str)))
    return out


def _fenced(text: str, ident: str) -> list[str]:
    lines = text.rstrip("\n").splitlines() or [""]
    cut = ""
    if len(lines) > EVIDENCE_LINES or len(text) > EVIDENCE_CHARS:
        kept: list[str] = []
        size = 0
        for line in lines[:EVIDENCE_LINES]:
            if size + len(line) > EVIDENCE_CHARS:
                break
            kept.append(line)
            size += len(line) + 1
        cut = (f"_Cut here: {len(lines) - len(kept)} more lines; the whole evidence is in "
               f"`opsagent incident show {_code(ident)} --json`._")
        lines = kept
    longest = max((len(m) for m in re.findall(r"`+", "\n".join(lines))), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + "text", *lines, fence, *([""] + [cut] if cut else [])]


def _expiry(o: dict[str, Any]) -> str | None:
    """When a block_ip step's block ends: its start plus the duration its message names
    ('… for 1h'), when it names one."""
    m = re.search(r"\bfor (\d+(?:\.\d+)?)\s*(s|m|h|d|w)\b", str(o.get("message", "")))
    if " until " in str(o.get("message", "")):
        return None  # the message says when
    start = epoch_of(o.get("started_at"))
    if m is None or start is None:
        return None
    seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[
        m.group(2)]
    return when(dt.datetime.fromtimestamp(start + seconds, dt.UTC).isoformat())
