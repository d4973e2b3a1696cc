"""Human output of a run: one line per resource worth showing, then an Ansible-like recap.

Colour only on a terminal (and never with NO_COLOR set). Providers never print; this
module formats what the engine returned.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from agent.engine import ResourceResult, RunResult

_COLOURS = {"ok": "32", "changed": "33", "failed": "31", "skipped": "36", "add": "32",
            "del": "31", "hunk": "36", "dim": "2"}


class Console:
    def __init__(self, stream: TextIO | None = None, *, colour: bool | None = None,
                 verbose: bool = False, show_diff: bool = False) -> None:
        self.out = stream or sys.stdout
        if colour is None:
            colour = self.out.isatty() and "NO_COLOR" not in os.environ
        self.colour = colour
        self.verbose = verbose
        self.show_diff = show_diff

    def paint(self, text: str, what: str) -> str:
        return f"\033[{_COLOURS[what]}m{text}\033[0m" if self.colour else text

    def write(self, line: str = "") -> None:
        self.out.write(line + "\n")

    def run(self, run: RunResult) -> None:
        pb = run.playbook
        label = {"plan": "PLAN", "check": "CHECK", "apply": "APPLY"}[run.mode]
        shown = os.path.relpath(pb.path)
        shown = pb.path if shown.startswith("..") else shown
        self.write(f"{label} {pb.model.name} ({shown}, {pb.revision}) "
                   f"on {run.host}")
        for r in run.results:
            if r.status == "ok" and not self.verbose:
                continue
            self._result(r, run.mode)
        self.recap(run)

    def _result(self, r: ResourceResult, mode: str) -> None:
        dry = r.status == "changed" and mode != "apply"
        status = "would change" if dry else r.status
        message = "" if dry else r.message  # the changes below say it all
        self.write(f"  {self.paint(f'{status:<12}', r.status)} {r.ref}  {self._dim(message)}"
                   .rstrip())
        for c in r.changes:
            before = "-" if c.before is None else c.before
            self.write(f"      ~ {c.field}: {before} -> {c.after}  ({c.reason})")
            if self.show_diff and c.diff:
                for line in c.diff.splitlines():
                    self.write("        " + self._diff_line(line))
        for o in r.outcomes:
            if not o.ok or self.verbose:
                mark = "ok" if o.ok else "failed"
                self.write(f"      {self.paint(mark, mark)} {o.action}: {o.message}")

    def _dim(self, text: str) -> str:
        return self.paint(text, "dim") if text else ""

    def _diff_line(self, line: str) -> str:
        if line.startswith(("+++", "---")):
            return line
        if line.startswith("+"):
            return self.paint(line, "add")
        if line.startswith("-"):
            return self.paint(line, "del")
        if line.startswith("@@"):
            return self.paint(line, "hunk")
        return line

    def recap(self, run: RunResult) -> None:
        parts = []
        for status in ("ok", "changed", "failed", "skipped"):
            n = run.count(status)
            text = f"{status}={n}"
            parts.append(self.paint(text, status) if n and status != "ok" else text)
        took = run.finished - run.started
        self.write(f"RECAP {run.host} {run.playbook.model.name}: {' '.join(parts)} "
                   f"({took:.2f}s)")
