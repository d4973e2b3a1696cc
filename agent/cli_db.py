"""`opsagent db maintain|report NAME -p PLAYBOOK`: a `db_maintenance:` entry on demand.

`maintain` runs the entry's purges, VACUUM and REINDEX now (the agent service runs them on
their schedule), honouring its maintenance windows; `--check` says what would be done and
changes nothing. `report` prints slow queries, unused indexes and dead rows per table.

Exit codes: 0 done (skipped tasks, e.g. outside their window, are fine); 2 bad input (the
playbook, an unknown NAME); 4 a task failed or the database could not be reached.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

EXIT_OK, EXIT_INPUT, EXIT_FAILED = 0, 2, 4


def add_parsers(sub: Any) -> None:
    d = sub.add_parser("db", help="PostgreSQL maintenance declared under db_maintenance: "
                       "(purges, VACUUM, REINDEX, report) on demand")
    dv = d.add_subparsers(dest="db_verb", metavar="maintain|report", required=True)
    m = dv.add_parser("maintain", help="run NAME's purges, VACUUM and REINDEX now")
    r = dv.add_parser("report", help="slow queries, unused indexes and dead rows of NAME's "
                      "database")
    for p in (m, r):
        p.add_argument("name", metavar="NAME", help="a db_maintenance entry's name")
        p.add_argument("-p", "--playbook", action="append", required=True, dest="playbooks",
                       metavar="PLAYBOOK", help="playbook file or directory declaring NAME "
                       "(repeatable)")
        p.add_argument("-e", "--extra-vars", action="append", default=[], metavar="K=V")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
    m.add_argument("-C", "--check", action="store_true",
                   help="dry run: say what would be done (rows each purge would delete), "
                   "change nothing")
    m.set_defaults(func=cmd_maintain)
    r.set_defaults(func=cmd_report)


def _find(args: argparse.Namespace) -> tuple[Any, Any]:
    """(the entry named NAME, the playbook model declaring it)."""
    import difflib

    from agent.cli import _load_all, parse_extra_vars
    from agent.errors import UsageError

    loaded = _load_all(args.playbooks, parse_extra_vars(args.extra_vars))
    found = [(spec, pb.model) for pb in loaded for spec in pb.model.db_maintenance
             if spec.name == args.name]
    if len(found) > 1:
        raise UsageError(f"{len(found)} playbooks declare db_maintenance {args.name!r}: give "
                         "the one you mean with -p")
    if not found:
        names = sorted({s.name for pb in loaded for s in pb.model.db_maintenance})
        near = difflib.get_close_matches(args.name, names, n=1)
        hint = (f"did you mean {near[0]!r}?" if near else
                f"declared: {', '.join(names)}" if names else "none is declared")
        raise UsageError(f"no db_maintenance entry named {args.name!r} ({hint})")
    return found[0]


def cmd_maintain(args: argparse.Namespace) -> int:
    spec, playbook = _find(args)
    from agent.dbmaint import open_windows
    from agent.dbmaint.tasks import run_maintenance

    now = time.time()
    result = run_maintenance(spec, now=now, in_window=open_windows(playbook.maintenance, now),
                             check=args.check)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        _print_result(result)
    return EXIT_OK if result.ok else EXIT_FAILED


def _print_result(result: Any) -> None:
    mode = " (check: nothing was changed)" if result.check else ""
    print(f"{result.name}: {result.target}{mode}")
    width = max((len(t.task) for t in result.tasks), default=0)
    for t in result.tasks:
        took = f"{t.duration_s:.2f} s" if t.status != "skipped" else ""
        print(f"  {t.task:<{width}}  {t.status:<7}  {took:>9}  {t.reason}")
    if result.report is not None:
        _print_report(result.report, indent="  ")
    print(f"{'would purge' if result.check else 'purged'} {result.rows_purged} rows in "
          f"{result.duration_s:.2f} s" + ("" if result.ok else "; a task failed"))


def cmd_report(args: argparse.Namespace) -> int:
    spec, _ = _find(args)
    from agent.dbmaint import DbError
    from agent.dbmaint.report import report_database

    try:
        report = report_database(spec)
    except DbError as e:
        if args.json:
            print(json.dumps({"name": spec.name, "error": str(e)}, indent=2))
        else:
            print(f"{spec.name}: {e}")
        return EXIT_FAILED
    if args.json:
        print(json.dumps({"name": spec.name, **report.as_dict()}, indent=2))
    else:
        print(f"{spec.name}: {report.target} (PostgreSQL {report.server_version})")
        _print_report(report, indent="")
    return EXIT_OK


def _print_report(report: Any, indent: str) -> None:
    from agent.playbook.types import format_size

    since = f" since {report.stats_since}" if report.stats_since else \
        " since the statistics began"
    if report.slow_queries is not None:
        print(f"{indent}slowest queries (mean time, pg_stat_statements):")
        for sq in report.slow_queries:
            print(f"{indent}  {sq.mean_ms:>10.1f} ms  x{sq.calls:<6}  {sq.query[:120]}")
        if not report.slow_queries:
            print(f"{indent}  none recorded")
    elif report.slow_queries_note:
        print(f"{indent}slowest queries: {report.slow_queries_note}")
    if report.unused_indexes is not None:
        print(f"{indent}unused indexes (never scanned{since}):")
        for ix in report.unused_indexes:
            print(f"{indent}  {ix.index} on {ix.table}  {format_size(ix.size_bytes)}")
        if not report.unused_indexes:
            print(f"{indent}  none")
    if report.tables is not None:
        print(f"{indent}tables (dead rows, estimated bloat):")
        for t in report.tables:
            print(f"{indent}  {t.table}  {t.dead_rows} dead / {t.live_rows} live "
                  f"({t.dead_percent:.1f}%), ~{format_size(t.bloat_bytes)} of "
                  f"{format_size(t.table_bytes)}"
                  f", last vacuum {t.last_vacuum or 'never'}")
        if not report.tables:
            print(f"{indent}  no user tables")
