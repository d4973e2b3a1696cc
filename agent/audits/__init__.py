"""Security audits: run one audit of a playbook's ``audits:`` and collect its findings.

``run_audit`` is the one entry point (``opsagent audit`` calls it from worker threads; the
agent service calls it on each audit's ``interval``). It imports the kind's module on first
use, so loading a playbook never pays for psutil's socket table or ``cryptography``; and it
turns any exception an audit lets escape into ``AuditResult.error``, so one broken audit never
stops the others. Audits only read the host.

A finding's identity across runs is ``Finding.key`` = (audit, kind, subject): the subject is
a path (``/etc/app/app.env``, ``/etc/ssl/site.pem#2`` for a chain's second certificate) or a
socket (``tcp/0.0.0.0:8080``, ``udp/[::1]:53``), never a count or a time, so a finding
seen again on the next run compares equal and one that is gone has been fixed.
"""

from __future__ import annotations

import importlib
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, cast

from agent.playbook.models.audits import AuditSpec

Severity = Literal["info", "warning", "critical"]
_LOWER: dict[str, Severity] = {"critical": "warning", "warning": "info", "info": "info"}

# audit kind -> (module under agent/audits/, function ``(spec, deadline) -> list[Finding]``)
_FUNCTIONS = {"world_writable": ("files", "audit_world_writable"),
              "secrets_readable": ("files", "audit_secrets_readable"),
              "listening_ports": ("ports", "audit_listening_ports"),
              "certificates": ("certs", "audit_certificates")}

_DIGITS = re.compile(r"(\d+)")

AuditFunction = Callable[[AuditSpec, float], list["Finding"]]


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing an audit found wrong.

    ``kind`` says what (``world_writable``, ``group_readable``, ``listening``, ``expiring``,
    ``expired``, ``unreadable``, ``scan_truncated``, ...), ``subject`` where (stable across
    runs), ``detail`` the one-line explanation for people (it may change between runs: the
    days left, the pid).
    """

    audit: str
    kind: str
    subject: str
    detail: str
    severity: Severity

    @property
    def key(self) -> tuple[str, str, str]:
        """What makes two runs' findings the same finding."""
        return self.audit, self.kind, self.subject

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class AuditResult:
    """One run of one audit. ``error`` set: the audit could not run (its findings are then
    whatever it found before failing, usually none), which is not the same as "all clear"."""

    name: str
    findings: list[Finding]
    duration_s: float
    error: str | None = None
    kind: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "duration_s": self.duration_s,
                "error": self.error, "findings": [f.as_dict() for f in self.findings]}


def run_audit(spec: AuditSpec) -> AuditResult:
    """Run the audit once; never raises for a failing audit (see AuditResult.error)."""
    start = time.monotonic()
    findings: list[Finding] = []
    error = None
    try:
        function = audit_function(spec.kind)
        findings = function(spec, time.monotonic() + spec.timeout)
    except Exception as e:  # an audit bug or an error it did not expect: this audit only
        error = f"{spec.kind} audit failed: {type(e).__name__}: {e}"
    return AuditResult(spec.name, unique(findings), round(time.monotonic() - start, 3), error,
                       spec.kind)


def audit_function(kind: str) -> AuditFunction:
    """``agent.audits.<module>.audit_<kind>``, its module imported on first use."""
    module_name, function = _FUNCTIONS[kind]
    module = importlib.import_module(f"agent.audits.{module_name}")
    return cast(AuditFunction, getattr(module, function))


def finding(spec: AuditSpec, kind: str, subject: str, detail: str, *,
            severity: Severity | None = None, lower: bool = False) -> Finding:
    """A finding of ``spec`` at its severity (or ``severity``; ``lower``: one step below)."""
    level: Severity = severity or spec.severity
    return Finding(spec.name, kind, subject, detail, _LOWER[level] if lower else level)


def unique(findings: Iterable[Finding]) -> list[Finding]:
    """One finding per key (the first), in subject then kind order: stable output."""
    seen: dict[tuple[str, str, str], Finding] = {}
    for f in findings:
        seen.setdefault(f.key, f)
    return sorted(seen.values(), key=lambda f: (_natural(f.subject), f.kind))


def _natural(text: str) -> tuple[str | int, ...]:
    """'a.pem#10' after 'a.pem#9': text and numbers alternate, numbers compared as numbers."""
    return tuple(int(p) if i % 2 else p for i, p in enumerate(_DIGITS.split(text)))


@dataclass
class Budget:
    """Bounds of a scan: entries examined and a deadline; says why it stopped, if it did."""

    max_entries: int
    deadline: float
    examined: int = 0
    stopped: str | None = field(default=None)

    def take(self) -> bool:
        """Count one more entry; False when the scan must stop (and ``stopped`` says why)."""
        if self.stopped is not None:
            return False
        self.examined += 1
        if self.examined > self.max_entries:
            self.stopped = "max_files"
        elif self.examined % 256 == 0 and time.monotonic() > self.deadline:
            self.stopped = "timeout"
        return self.stopped is None

    def truncated(self, spec: AuditSpec) -> list[Finding]:
        """The one finding saying the scan was cut short, or none."""
        if self.stopped is None:
            return []
        why = (f"more than max_files ({self.max_entries}) entries" if self.stopped == "max_files"
               else f"still running after the timeout ({spec.timeout:g}s)")
        return [finding(spec, "scan_truncated", self.stopped,
                        f"scan stopped after {self.examined - 1} entries: {why}; what was "
                        "not reached was not audited (narrow paths, add exclude, or raise "
                        f"{self.stopped})")]


__all__ = ["AuditResult", "Finding", "Severity", "audit_function", "run_audit"]
