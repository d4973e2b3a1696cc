"""`opsagent check`, `opsagent alert list|ack` and `opsagent silence add|list|remove`.

Silences and acknowledgements are written to the agent's state.db; the running agent reads
them within seconds, so these work whether or not the agent is up, and survive it.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from typing import Any

EXIT_OK, EXIT_INPUT, EXIT_FAILED = 0, 2, 4


def add_parsers(sub: Any) -> None:
    def state(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default=None, metavar="FILE")
        p.add_argument("--state-dir", default=None)

    c = sub.add_parser("check", help="run the playbooks' health checks once and print them")
    c.add_argument("playbooks", nargs="+", metavar="PLAYBOOK")
    c.add_argument("-e", "--extra-vars", action="append", default=[], metavar="K=V")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_check)

    a = sub.add_parser("alert", help="list alerts, acknowledge one (stops its escalation)")
    av = a.add_subparsers(dest="alert_verb", metavar="VERB", required=True)
    al = av.add_parser("list", help="alerts pending, firing or flapping")
    state(al)
    al.add_argument("--json", action="store_true")
    al.set_defaults(func=cmd_alert_list)
    ak = av.add_parser("ack", help="acknowledge a firing alert: no more escalation or reminders")
    ak.add_argument("alert_id", metavar="ID")
    ak.add_argument("--comment", default="")
    state(ak)
    ak.set_defaults(func=cmd_alert_ack)

    s = sub.add_parser("silence", help="mute a rule's notifications and automatic actions")
    sv = s.add_subparsers(dest="silence_verb", metavar="VERB", required=True)
    sa = sv.add_parser("add", help="mute RULE (a threshold name or glob) for a while")
    sa.add_argument("rule", metavar="RULE")
    sa.add_argument("--for", dest="duration", default=None, metavar="DURATION",
                    help="how long, e.g. 2h")
    sa.add_argument("--until-resolved", action="store_true",
                    help="end when an alert it matches resolves")
    sa.add_argument("--label", action="append", default=[], metavar="K=V",
                    help="only alerts with this label (repeatable)")
    sa.add_argument("--comment", default="")
    state(sa)
    sa.set_defaults(func=cmd_silence_add)
    sl = sv.add_parser("list", help="active silences")
    sl.add_argument("--all", action="store_true", help="ended ones too")
    sl.add_argument("--json", action="store_true")
    state(sl)
    sl.set_defaults(func=cmd_silence_list)
    sr = sv.add_parser("remove", help="end a silence now")
    sr.add_argument("silence_id", metavar="ID")
    state(sr)
    sr.set_defaults(func=cmd_silence_remove)


def _state_dir(args: argparse.Namespace) -> str:
    from agent.cli import _agent_config

    return str(_agent_config(args).state_dir)


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "?"


def cmd_check(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from agent.checks import run_check
    from agent.cli import _load_all, parse_extra_vars

    loaded = _load_all(args.playbooks, parse_extra_vars(args.extra_vars))
    specs = [c for pb in loaded for c in pb.model.checks]
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(run_check, specs))
    if args.json:
        print(json.dumps({c.name: {"status": o.status, "message": o.message,
                                   "latency_ms": o.latency_ms, "values": o.values}
                          for c, o in zip(specs, outcomes, strict=True)}, indent=2))
    else:
        width = max((len(c.name) for c in specs), default=0)
        for c, o in zip(specs, outcomes, strict=True):
            lat = f"{o.latency_ms:.0f} ms" if o.latency_ms is not None else ""
            print(f"{c.name:<{width}}  {o.status:<9}  {lat:>8}  {o.message}")
        if not specs:
            print("no checks declared")
    return EXIT_FAILED if any(o.status == "unhealthy" for o in outcomes) else EXIT_OK


def cmd_alert_list(args: argparse.Namespace) -> int:
    from agent import statedb

    with statedb.connect(_state_dir(args), create=False) as db:
        rows = db.execute("SELECT doc FROM alert_state").fetchall() if db is not None else []
    alerts = [a for a in (json.loads(r[0]) for r in rows)
              if a.get("state") != "inactive" or a.get("flapping")]
    if args.json:
        print(json.dumps(alerts, indent=2))
        return EXIT_OK
    if not alerts:
        print("no alerts")
    for a in sorted(alerts, key=lambda a: a.get("since", 0)):
        state = "flapping" if a.get("flapping") else a["state"]
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(a.get("since", 0)))
        ack = " (acknowledged)" if a.get("acked") else ""
        told = "; notified " + ", ".join(a["notified"]) if a.get("notified") else ""
        print(f"{a.get('alert_id') or '-':<8}  {a['rule']}: {state} since {since}, value "
              f"{a.get('value')}{told}{ack}")
    return EXIT_OK


def cmd_alert_ack(args: argparse.Namespace) -> int:
    from agent.rules.silences import ack

    a = ack(_state_dir(args), args.alert_id, _who(), args.comment)
    print(f"alert {args.alert_id} ({a['rule']}) acknowledged: no further escalation or "
          "reminders for this episode; the resolve is still sent")
    return EXIT_OK


def cmd_silence_add(args: argparse.Namespace) -> int:
    from agent.errors import UsageError
    from agent.playbook.types import parse_duration
    from agent.rules.silences import add

    duration = None
    if args.duration is not None:
        try:
            duration = parse_duration(args.duration)
        except ValueError as e:
            raise UsageError(f"--for: {e}") from None
    labels: dict[str, str] = {}
    for item in args.label:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise UsageError(f"--label {item!r} is not K=V (e.g. path=/)")
        labels[k] = v
    s = add(_state_dir(args), args.rule, duration=duration, until_resolved=args.until_resolved,
            comment=args.comment, by=_who(), labels=labels)
    print(f"{s.describe()}")
    print(f"end it early with `opsagent silence remove {s.id}`")
    return EXIT_OK


def cmd_silence_list(args: argparse.Namespace) -> int:
    import dataclasses

    from agent.rules.silences import listing

    found = listing(_state_dir(args), include_ended=args.all)
    if args.json:
        print(json.dumps([dataclasses.asdict(s) for s in found], indent=2))
    elif not found:
        print("no active silences")
    for s in found if not args.json else []:
        print(s.describe())
    return EXIT_OK


def cmd_silence_remove(args: argparse.Namespace) -> int:
    from agent.rules.silences import expire

    if not expire(_state_dir(args), args.silence_id):
        print(f"opsagent: no active silence {args.silence_id} (see `opsagent silence list`)",
              file=sys.stderr)
        return EXIT_INPUT
    print(f"silence {args.silence_id} ended")
    return EXIT_OK
