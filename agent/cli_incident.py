"""`opsagent incident list|show|report`: the incident records of runbook runs.

    opsagent incident list [--json]
    opsagent incident show INC-20261123-093112-3f2a [--json]
    opsagent incident report INC-2026112 [-o postmortem.md]

Every ``opsagent remediate`` run (dry runs too) is recorded under an incident id in the
controller's state.db (``--state-dir``, or the ``state_dir`` of ``--config``); an id may be
given by any unique start of it. ``report`` writes the post-incident report in Markdown
(agent.fleet.postmortem) to stdout or to a file. Exit 2: no such incident, or an ambiguous
start of an id.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any

from agent.errors import UsageError

EXIT_OK, EXIT_INTERNAL = 0, 1


def add_parsers(sub: Any) -> None:
    def state(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default=None, metavar="FILE",
                       help="agent config whose state_dir holds the records")
        p.add_argument("--state-dir", default=None)

    i = sub.add_parser("incident", help="incident records of runbook runs: list, show, "
                       "post-incident report")
    iv = i.add_subparsers(dest="incident_verb", metavar="list|show|report", required=True)
    il = iv.add_parser("list", help="runbook runs recorded here, newest first")
    il.add_argument("--json", action="store_true", help="the records as a JSON list")
    il.add_argument("-n", "--limit", type=int, default=50, help="at most this many (50)")
    state(il)
    il.set_defaults(func=cmd_incident_list)
    ish = iv.add_parser("show", help="one run: hosts, each step's outcome, the timeline")
    ish.add_argument("id", metavar="ID", help="an incident id or a unique start of one")
    ish.add_argument("--json", action="store_true", help="the whole record as JSON")
    state(ish)
    ish.set_defaults(func=cmd_incident_show)
    ir = iv.add_parser("report", help="the post-incident report in Markdown")
    ir.add_argument("id", metavar="ID", help="an incident id or a unique start of one")
    ir.add_argument("-o", "--output", default=None, metavar="FILE",
                    help="write it to FILE instead of stdout")
    state(ir)
    ir.set_defaults(func=cmd_incident_report)


def _store(args: argparse.Namespace) -> Any:
    from agent.cli import _agent_config
    from agent.fleet.incidents import IncidentStore

    return IncidentStore(_agent_config(args).state_dir)


def _find(args: argparse.Namespace) -> dict[str, Any]:
    doc: dict[str, Any] | None = _store(args).get(args.id)
    if doc is None:
        raise UsageError(f"no incident {args.id!r} is recorded here (`opsagent incident "
                         "list` shows them)")
    return doc


def _state_errors(cmd: Any) -> Any:
    """The state database failing: one line on stderr, never a traceback."""
    import functools

    @functools.wraps(cmd)
    def run(args: argparse.Namespace) -> int:
        from agent.errors import ProviderError

        try:
            code: int = cmd(args)
            return code
        except ProviderError as e:
            print(f"opsagent: {e}", file=sys.stderr)
            return EXIT_INTERNAL

    return run


def hosts_line(doc: dict[str, Any]) -> str:
    """'4 hosts: 1 changed, 1 failed, 1 unreachable, 1 ok'."""
    counts: dict[str, int] = {}
    for h in doc.get("hosts") or []:
        counts[h.get("status", "?")] = counts.get(h.get("status", "?"), 0) + 1
    total = sum(counts.values())
    order = ["changed", "would-change", "failed", "unreachable", "rolled-back", "ok",
             "skipped"]
    parts = [f"{counts[s]} {s}" for s in sorted(counts, key=lambda s: (
        order.index(s) if s in order else len(order), s))]
    return f"{total} host{'s' if total != 1 else ''}" + (f": {', '.join(parts)}"
                                                         if parts else "")


@_state_errors
def cmd_incident_list(args: argparse.Namespace) -> int:
    docs = _store(args).list(limit=max(1, args.limit))
    if args.json:
        print(json.dumps(docs, indent=2))
        return EXIT_OK
    if not docs:
        print("no incidents recorded")
        return EXIT_OK
    from agent.fleet.postmortem import when

    width = max(len(str(d.get("id"))) for d in docs)
    for d in docs:
        status = d.get("status", "?") + (" (dry run)" if d.get("check") else "")
        rb = (d.get("runbook") or {}).get("name", "?")
        print(f"{d.get('id', '?'):<{width}}  {when(d.get('started_at'))}  {status:<19}  "
              f"{rb}  by {d.get('by', '?')}  {hosts_line(d)}")
    return EXIT_OK


@_state_errors
def cmd_incident_show(args: argparse.Namespace) -> int:
    doc = _find(args)
    if args.json:
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    print(render_text(doc))
    return EXIT_OK


@_state_errors
def cmd_incident_report(args: argparse.Namespace) -> int:
    from agent.fleet.postmortem import render_markdown

    doc = _find(args)
    text = render_markdown(doc)
    if args.output is None:
        sys.stdout.write(text)
        return EXIT_OK
    tmp = f"{args.output}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, args.output)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise UsageError(f"cannot write {args.output}: {e.strerror or e}") from None
    print(f"post-incident report of {doc['id']} written to {args.output}")
    return EXIT_OK


def render_text(doc: dict[str, Any]) -> str:
    """One incident for a terminal: the facts, each host, each step's outcomes, the
    timeline."""
    from agent.fleet.incidents import epoch_of
    from agent.fleet.postmortem import duration, when

    rb = doc.get("runbook") or {}
    start, end = epoch_of(doc.get("started_at")), epoch_of(doc.get("finished_at"))
    took = duration(end - start) if start is not None and end is not None else "running"
    dry = " (dry run: nothing was changed)" if doc.get("check") else ""
    out = [f"{doc.get('id')}  {doc.get('title', '')}",
           f"  status    {doc.get('status')}{dry}",
           f"  runbook   {rb.get('name')} ({rb.get('path')}, {rb.get('revision')})",
           f"  by        {doc.get('by')}",
           f"  started   {when(doc.get('started_at'))}, took {took}"]
    if doc.get("inventory") or doc.get("limit"):
        out.append(f"  inventory {doc.get('inventory') or '-'}"
                   + (f" --limit {doc['limit']}" if doc.get("limit") else ""))
    for k, v in (doc.get("params") or {}).items():
        out.append(f"  -e        {k}={v if isinstance(v, str) else json.dumps(v)}")
    out += ["", f"hosts ({hosts_line(doc)})"]
    width = max([len(str(h.get("name"))) for h in doc.get("hosts") or []] or [4])
    out += [f"  {h.get('name', '?'):<{width}}  {h.get('status', '?'):<12}  "
            f"{_one_line(h.get('message', ''))}"
            + (f"  [ran in the {h['served_by']}]" if str(h.get("served_by", "")).startswith(
                "agent service") else "") for h in doc.get("hosts") or []]
    outcomes = doc.get("outcomes") or []
    for s in sorted(doc.get("steps") or [], key=lambda s: s.get("index", 0)):
        out += ["", f"step {s.get('index', 0) + 1}: {s.get('name')} ({s.get('action')})"]
        mine = [o for o in outcomes if o.get("step") == s.get("index")]
        out += [f"  {o.get('host', '?'):<{width}}  "
                f"{'ignored' if o.get('ignored') else o.get('status', '?'):<12}  "
                f"{_one_line(o.get('message', ''))}" for o in mine] or ["  (not run)"]
    if doc.get("timeline"):
        out += ["", "timeline (UTC)"]
        out += [f"  {when(e.get('at'))[11:19]}  {_one_line(e.get('event', ''))}"
                for e in doc["timeline"]]
    if doc.get("followups"):
        out += ["", "follow-ups"] + [f"  - {_one_line(f)}" for f in doc["followups"]]
    out += ["", f"post-incident report: opsagent incident report {doc.get('id')}"]
    return "\n".join(out)


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())
