"""`opsagent audit PLAYBOOK...`: run the playbooks' security audits once and print findings.

Exit codes: 0 no findings; 3 findings (drift from the declared baseline); 4 an audit could
not run (its part of the host is unknown, which is not "all clear"); 2 bad input.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

EXIT_OK, EXIT_DRIFT, EXIT_FAILED = 0, 3, 4


def add_parsers(sub: Any) -> None:
    a = sub.add_parser("audit", help="run the playbooks' security audits once and print "
                       "their findings (exit 3 when there are any)")
    a.add_argument("playbooks", nargs="+", metavar="PLAYBOOK")
    a.add_argument("-e", "--extra-vars", action="append", default=[], metavar="K=V")
    a.add_argument("--json", action="store_true", help="print the results as JSON")
    a.set_defaults(func=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from agent.audits import run_audit
    from agent.cli import _load_all, parse_extra_vars

    loaded = _load_all(args.playbooks, parse_extra_vars(args.extra_vars))
    specs = [(pb.path, a) for pb in loaded for a in pb.model.audits]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run_audit, [a for _, a in specs]))
    findings = sum(len(r.findings) for r in results)
    if args.json:
        print(json.dumps({"audits": [{"playbook": path, **r.as_dict()}
                                     for (path, _), r in zip(specs, results, strict=True)],
                          "findings": findings}, indent=2))
    else:
        _print_text(results)
    if any(r.error for r in results):
        return EXIT_FAILED
    return EXIT_DRIFT if findings else EXIT_OK


def _print_text(results: list[Any]) -> None:
    if not results:
        print("no audits declared")
        return
    for r in results:
        n = len(r.findings)
        head = f"{r.name} ({r.kind}, {r.duration_s:.2f} s): "
        if r.error:
            print(head + f"could not run: {r.error}")
        else:
            print(head + (f"{n} finding{'s' if n != 1 else ''}" if n else "no findings"))
        width = max((len(f.severity) for f in r.findings), default=0)
        for f in r.findings:
            print(f"  {f.severity:<{width}}  {f.subject}  {f.kind}: {f.detail}")
    total = sum(len(r.findings) for r in results)
    failed = sum(1 for r in results if r.error)
    tail = f"; {failed} could not run" if failed else ""
    print(f"{total} finding{'s' if total != 1 else ''} in {len(results)} "
          f"audit{'s' if len(results) != 1 else ''}{tail}")
