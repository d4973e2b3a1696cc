"""`opsagent backup run|list|verify|restore`: the playbooks' backups, on demand.

Exit codes: 0 done; 2 bad input, or a restore refused before changing anything (the target
holds data and --force was not given, no confirmation); 4 a run, verification or restore
failed (including a run refused because another run of the backup is in progress).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

EXIT_OK, EXIT_INPUT, EXIT_FAILED = 0, 2, 4
DEFAULT_PLAYBOOKS = "/etc/opsagent/playbooks"


def add_parsers(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-p", "--playbook", action="append", default=None, metavar="PLAYBOOK",
                        help=f"playbook file or directory (repeatable; default "
                        f"{DEFAULT_PLAYBOOKS})")
    common.add_argument("-e", "--extra-vars", action="append", default=[], metavar="K=V")
    common.add_argument("--json", action="store_true", help="print the result as JSON")

    b = sub.add_parser("backup", help="run, list, verify or restore the playbooks' backups")
    bv = b.add_subparsers(dest="backup_verb", metavar="VERB", required=True)
    r = bv.add_parser("run", parents=[common], help="take a backup now (and verify it when "
                      "the playbook says so)")
    r.add_argument("name", metavar="NAME")
    r.set_defaults(func=cmd_run)
    ls = bv.add_parser("list", parents=[common], help="complete runs, oldest first")
    ls.add_argument("name", nargs="?", metavar="NAME", help="one backup (default: all)")
    ls.set_defaults(func=cmd_list)
    v = bv.add_parser("verify", parents=[common], help="checksums, decompression and (for "
                      "PostgreSQL with verify.restore) a scratch restore and query")
    v.add_argument("name", metavar="NAME")
    v.add_argument("--run", default=None, metavar="RUNID", help="default: the newest run")
    v.set_defaults(func=cmd_verify)
    pr = bv.add_parser("prune", parents=[common], help="apply the retention policy to the "
                       "local runs (and the offsite copies)")
    pr.add_argument("name", metavar="NAME")
    pr.add_argument("--check", action="store_true", help="list what would be pruned; delete "
                    "nothing")
    pr.add_argument("--explain", action="store_true", help="say for every run which rule keeps "
                    "it")
    pr.set_defaults(func=cmd_prune)
    rs = bv.add_parser("restore", parents=[common], help="put a run back (asks first)")
    rs.add_argument("name", metavar="NAME")
    rs.add_argument("--run", default=None, metavar="RUNID", help="this run")
    rs.add_argument("--at", default=None, metavar="TIME",
                    help="the newest run at or before TIME: ISO 8601 (local time unless it "
                    "has a zone) or a duration ago, e.g. 2026-11-23T02:30 or 36h")
    rs.add_argument("--to", default=None, metavar="TARGET",
                    help="PostgreSQL: a database name or a connection string (default: the "
                    "dumped names); files: a directory (default /); redis, command: a file")
    rs.add_argument("--database", default=None, metavar="DB",
                    help="PostgreSQL: restore only this dumped database")
    rs.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    rs.add_argument("--force", action="store_true",
                    help="replace a database that holds data, or existing files")
    rs.set_defaults(func=cmd_restore)


def _specs(args: argparse.Namespace) -> list[Any]:
    from agent.cli import _load_all, parse_extra_vars

    loaded = _load_all(args.playbook or [DEFAULT_PLAYBOOKS], parse_extra_vars(args.extra_vars))
    specs = [b for pb in loaded for b in pb.model.backups]
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            from agent.errors import UsageError

            raise UsageError(f"two playbooks declare a backup named {s.name!r}: pick one "
                             "with -p PLAYBOOK")
        seen.add(s.name)
    return specs


def _spec(args: argparse.Namespace) -> Any:
    from agent.backups.run import find_spec

    return find_spec(_specs(args), args.name)


def _emit(args: argparse.Namespace, doc: Any) -> None:
    if args.json:
        print(json.dumps(doc, indent=2, default=str))


def cmd_run(args: argparse.Namespace) -> int:
    from agent.backups.run import run_backup

    spec = _spec(args)
    res = run_backup(spec)
    _emit(args, res.as_dict())
    if not args.json:
        if res.run_id is not None:
            verified = {None: "", True: "; verified", False: "; verification FAILED"}
            print(f"backup {spec.name}: run {res.run_id} stored in {res.path}: "
                  f"{len(res.artefacts)} artefacts, {res.bytes_raw} → {res.bytes_stored} bytes "
                  f"in {res.duration_s:.1f} s{verified[res.verified]}")
        if res.error:
            print(f"opsagent: backup {spec.name}: {res.error}", file=sys.stderr)
    return EXIT_OK if res.ok else EXIT_FAILED


def cmd_list(args: argparse.Namespace) -> int:
    from agent.backups.run import describe, find_spec, list_backups, newest_age

    specs = _specs(args)
    if args.name:
        specs = [find_spec(specs, args.name)]
    out = [{"backup": s.name, "destination": s.destination, "newest_age_s": newest_age(s),
            "runs": [r.as_dict() for r in list_backups(s)]} for s in specs]
    _emit(args, out)
    if not args.json:
        if not specs:
            print("no backups declared")
        for s in specs:
            runs = list_backups(s)
            print(f"{s.name} ({s.destination}/{s.name}): {len(runs)} "
                  f"run{'s' if len(runs) != 1 else ''}")
            for run in runs:
                print("  " + describe(run))
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from agent.backups import BackupError
    from agent.backups.prune import prune_local

    spec = _spec(args)
    if spec.retention is None:
        print(f"opsagent: backup {spec.name} has no retention: nothing is pruned",
              file=sys.stderr)
        return EXIT_INPUT
    now = datetime.now(UTC)
    try:
        local = prune_local(spec, now=now, check=args.check)
    except BackupError as e:
        print(f"opsagent: backup {spec.name}: {e}", file=sys.stderr)
        return EXIT_FAILED
    remote: list[Any] = []
    if spec.offsite is not None:
        from agent.backups.offsite import prune_remote

        remote = prune_remote(spec, now, check=args.check)
    doc = {"backup": spec.name, "check": args.check,
           "local": [{"run": d.backup.id, "keep": d.keep, "why": d.explain()}
                     for d in local.decisions],
           "removed": local.removed,
           "offsite": [{"target": p.url, "error": p.error,
                        "to_delete": list(p.to_delete), "deleted": list(p.deleted)}
                       for p in remote]}
    _emit(args, doc)
    if not args.json:
        verb = "would prune" if args.check else "pruned"
        gone = local.to_remove
        print(f"backup {spec.name}: {verb} {len(gone)} of {len(local.decisions)} local runs"
              + (f": {', '.join(gone)}" if gone else ""))
        if args.explain:
            for d in local.decisions:
                print("  " + d.explain())
        for p in remote:
            if p.error:
                print(f"  offsite: {p.error}")
            else:
                print(f"  offsite: {verb} {len(p.to_delete)}")
    return EXIT_FAILED if any(p.error for p in remote) else EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from agent.backups import BackupError
    from agent.backups.restore import pick_run
    from agent.backups.verify import verify_run

    spec = _spec(args)
    run = pick_run(spec, args.run, None) if args.run else None
    try:
        res = verify_run(spec, run)
    except BackupError as e:  # busy
        print(f"opsagent: backup {spec.name}: {e}", file=sys.stderr)
        return EXIT_FAILED
    _emit(args, res.as_dict())
    if not args.json:
        for c in res.checks:
            print(f"{'ok' if c.ok else 'FAILED':<6}  {c.file}: {c.detail}")
        if res.query_result is not None:
            print(f"query in the restored copy of {res.restored}: {res.query_result}")
        if res.ok:
            print(f"backup {spec.name}: run {res.run_id} verified in {res.duration_s:.1f} s")
    if not res.ok:
        print(f"opsagent: backup {spec.name}: verification failed: {res.error}",
              file=sys.stderr)
    return EXIT_OK if res.ok else EXIT_FAILED


def cmd_restore(args: argparse.Namespace) -> int:
    from agent.backups import BackupError, RestoreRefused
    from agent.backups.restore import restore

    spec = _spec(args)
    at = parse_at(args.at) if args.at else None
    opts = {"run_id": args.run, "at": at, "to": args.to, "force": args.force,
            "database": args.database}
    try:
        plan = restore(spec, yes=False, **opts)
        if not args.json or not args.yes:
            print(f"restore of backup {spec.name}, run {plan.run_id}:", file=sys.stderr)
            for step in plan.steps:
                print(f"  - {step}", file=sys.stderr)
        if not args.yes:
            if not sys.stdin.isatty():
                print("opsagent: not a terminal: nothing was restored (give --yes to restore "
                      "without asking)", file=sys.stderr)
                return EXIT_INPUT
            answer = input("Restore? Type yes to go on: ").strip().lower()
            if answer not in ("y", "yes"):
                print("nothing was restored", file=sys.stderr)
                return EXIT_INPUT
        res = restore(spec, yes=True, **opts)
    except RestoreRefused as e:
        print(f"opsagent: refused: {e}; nothing was changed", file=sys.stderr)
        return EXIT_INPUT
    except (BackupError, OSError) as e:
        print(f"opsagent: restore of {spec.name} failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    _emit(args, res.as_dict())
    if not args.json:
        for w in res.warnings:
            print(f"warning: {w}", file=sys.stderr)
        print(f"backup {spec.name}: run {res.run_id} restored in {res.duration_s:.1f} s")
    return EXIT_OK


def parse_at(text: str, now: datetime | None = None) -> datetime:
    """ISO 8601 (local time without a zone), or a duration ago ("36h", "2d")."""
    from agent.errors import UsageError
    from agent.playbook.types import parse_duration

    try:
        return (now or datetime.now(UTC)) - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--at {text!r}: expected a time like 2026-11-23T02:30 (ISO 8601) "
                         "or a duration ago like 36h") from None
    return t.astimezone(UTC) if t.tzinfo is None else t
