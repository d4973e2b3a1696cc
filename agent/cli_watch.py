"""`opsagent watch test LOGFILE PLAYBOOK...`: a playbook's log watches over a file, reported
the way ``fail2ban-regex`` reports a filter: hits per regex, lines matched/ignored/missed,
and what the watch would have done (keys reaching the threshold within the window)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

EXIT_OK, EXIT_INPUT = 0, 2


def add_parsers(sub: Any) -> None:
    w = sub.add_parser("watch", help="try log watches on a file")
    wv = w.add_subparsers(dest="watch_verb", metavar="VERB", required=True)
    t = wv.add_parser("test", help="run a playbook's watches over LOGFILE and print matches "
                      "(like fail2ban-regex)")
    t.add_argument("logfile", metavar="LOGFILE")
    t.add_argument("playbooks", nargs="+", metavar="PLAYBOOK")
    t.add_argument("-e", "--extra-vars", action="append", default=[], metavar="K=V")
    t.add_argument("--watch", action="append", default=[], metavar="NAME",
                   help="only this watch (repeatable)")
    t.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="worker processes (default: one per core, up to 4, for big files)")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_watch_test)


def cmd_watch_test(args: argparse.Namespace) -> int:
    from agent.cli import _load_all, parse_extra_vars
    from agent.watches.fail2ban import FilterError
    from agent.watches.replay import replay

    loaded = _load_all(args.playbooks, parse_extra_vars(args.extra_vars))
    watches = [w for pb in loaded for w in pb.model.watches
               if not args.watch or w.name in args.watch]
    if not watches:
        wanted = f" named {', '.join(args.watch)}" if args.watch else ""
        print(f"opsagent: no watch{wanted} in {', '.join(args.playbooks)}", file=sys.stderr)
        return EXIT_INPUT
    if args.jobs is not None and not 1 <= args.jobs <= 64:
        print("opsagent: --jobs must be between 1 and 64", file=sys.stderr)
        return EXIT_INPUT
    try:
        results, seconds = replay(args.logfile, watches, jobs=args.jobs)
    except FilterError as e:
        print(f"opsagent: {e}", file=sys.stderr)
        return EXIT_INPUT
    except OSError as e:
        print(f"opsagent: {args.logfile}: {e.strerror or e}", file=sys.stderr)
        return EXIT_INPUT
    if args.json:
        print(json.dumps([_doc(r) for r in results], indent=2))
    else:
        _print(args.logfile, results, seconds)
    return EXIT_OK


def _doc(r: Any) -> dict[str, Any]:
    s = r.part.stats
    return {
        "watch": r.spec.name, "prefilter": r.engine,
        "lines": s.lines, "matched": s.matched, "ignored": s.ignored,
        "not_failures": s.nofail, "missed": s.lines - s.matched - s.ignored - s.nofail,
        "hits": [{"index": k + 1, "regex": r.alternatives[k], "hits": n}
                 for k, n in sorted(s.per_alternative.items())],
        "keys": len(r.part.times),
        "fired": len(r.firings), "keys_fired": len({f[0] for f in r.firings}),
        "firings": [{"key": k, "at": at, "matches": n} for k, at, n in r.firings[:1000]],
        "top": [{"key": k, "matches": n} for k, n in r.top],
        "samples": r.part.samples,
    }


def _print(logfile: str, results: list[Any], seconds: float) -> None:
    print(f"Log file: {logfile}\n")
    for r in results:
        s = r.part.stats
        source = r.spec.pattern if isinstance(r.spec.pattern, str) else \
            f"fail2ban filter {r.spec.pattern.fail2ban_filter}"
        print(f"{r.spec.name}  ({source}; prefilter: {r.engine})")
        print("|- #) [# of hits] regular expression")
        for k, n in sorted(s.per_alternative.items()):
            print(f"|  {k + 1:>2}) [{n}] {r.alternatives[k]}")
        print("`-")
        if r.part.samples:
            print("|- first matches:")
            for line in r.part.samples:
                print(f"|    {line}")
        key = r.spec.key or "(the whole watch)"
        keys_fired = len({f[0] for f in r.firings})
        print(f"|- key {key}: {len(r.part.times)} distinct; "
              f"threshold {r.spec.threshold} within {_dur(r.spec.within)}: would fire "
              f"{len(r.firings)} times for {keys_fired} keys")
        for k, n in r.top[:5]:
            print(f"|    {k or '-'}  {n} matches")
        missed = s.lines - s.matched - s.ignored - s.nofail
        extra = f", {s.nofail} not failures (NOFAIL)" if s.nofail else ""
        print(f"Lines: {s.lines} lines, {s.ignored} ignored, {s.matched} matched, "
              f"{missed} missed{extra}\n")
    print(f"[processed in {seconds:.2f} sec]")


def _dur(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return time.strftime("%Ss", time.gmtime(seconds)) if seconds < 60 else f"{seconds:g}s"
