"""``certificates``: certificate files that expire soon, have expired, or cannot be checked.

Paths are files, globs and directories. A file named literally must hold a certificate; a
file found by a glob or in a directory (``*.pem``, ``*.crt``, ``*.cer``, ``*.cert``, walked
without following directory symlinks) that holds only other PEM blocks (a private key) is
skipped. Every certificate of a chain or bundle is checked; a file without any PEM block is
tried as one DER certificate. Symlinked files are read (Let's Encrypt's live/ directory is
made of them); a file reached twice is checked once, under its own name if it was reached
by it, else under the first symlink seen.

Findings: ``expiring`` (within ``within``; the audit's severity), ``expired`` (critical),
``not_yet_valid``, ``unparseable``, ``unreadable``, ``missing`` (a literal path that does not
exist, a glob that matches nothing). A certificate's subject is ``PATH#N`` (N from 1, its
position in the file), so a renewed certificate at the same place clears its finding.
"""

from __future__ import annotations

import glob
import os
import re
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from agent.audits import Budget, Finding, finding
from agent.playbook.models.audits import AuditSpec, Certificates
from agent.playbook.types import format_duration

if TYPE_CHECKING:
    from cryptography.x509 import Certificate

CERT_SUFFIXES = (".pem", ".crt", ".cer", ".cert")
MAX_BYTES = 1 << 20  # a certificate file is a few KiB; a bundle of every public CA ~250 KiB
_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.S)
_DAY_S = 86400.0


def audit_certificates(spec: AuditSpec, deadline: float) -> list[Finding]:
    certs = spec.certificates
    assert certs is not None
    out: list[Finding] = []
    budget = Budget(certs.max_files, deadline)
    now = datetime.now(UTC)
    for path, literal in _distinct(_candidates(spec, certs, budget, out)):
        out.extend(check_file(spec, certs, path, now, literal=literal))
    return out + budget.truncated(spec)


def _distinct(candidates: Iterator[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """One name per file: the file's own name when it was reached by it, else the first
    symlink seen (a literal name in either case makes the file literal)."""
    by_real: dict[str, tuple[str, bool]] = {}
    for path, literal in candidates:
        real = os.path.realpath(path)
        first, was_literal = by_real.get(real, (path, literal))
        by_real[real] = (path if path == real else first, was_literal or literal)
    return list(by_real.values())


def _candidates(spec: AuditSpec, certs: Certificates, budget: Budget,
                out: list[Finding]) -> Iterator[tuple[str, bool]]:
    """(path, named literally) of every file to read."""
    for pattern in certs.paths:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                out.append(finding(spec, "missing", pattern, "no file matches"))
        else:
            matches = [os.path.normpath(pattern)]
            if not os.path.lexists(matches[0]):
                out.append(finding(spec, "missing", matches[0], "no such file or directory"))
                continue
        for path in matches:
            if os.path.isdir(path):
                yield from _directory(spec, path, budget, out)
            elif budget.take():
                yield path, not glob.has_magic(pattern)
            if budget.stopped:
                return


def _directory(spec: AuditSpec, top: str, budget: Budget,
               out: list[Finding]) -> Iterator[tuple[str, bool]]:
    def unreadable(e: OSError) -> None:
        out.append(finding(spec, "unreadable", e.filename or top,
                           f"cannot list: {e.strerror or e}; what is under it was not audited",
                           severity="info"))

    for root, dirs, files in os.walk(top, onerror=unreadable):
        dirs.sort()
        for name in sorted(files):
            if not budget.take():  # every entry counts: a big tree of other files is bounded too
                return
            if name.lower().endswith(CERT_SUFFIXES):
                yield os.path.join(root, name), False


def check_file(spec: AuditSpec, certs: Certificates, path: str, now: datetime, *,
               literal: bool) -> list[Finding]:
    """The findings about one file: each certificate's dates, or why none could be read."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        return [finding(spec, "unreadable", path, f"cannot read: {e.strerror or e}")]
    if len(data) > MAX_BYTES:
        return [finding(spec, "unparseable", path, f"larger than {MAX_BYTES >> 20} MiB: not "
                        "a certificate file")]
    blocks = list(_PEM.finditer(data))
    if not blocks:
        cert = _der(data)
        if cert is None:
            return [finding(spec, "unparseable", path, "holds no PEM block and is not a DER "
                            "certificate")]
        return grade(spec, certs, cert, f"{path}#1", now)
    chain = [m.group(0) for m in blocks if m.group(1).endswith(b"CERTIFICATE")]
    if not chain:
        if not literal:
            return []  # a key (or CSR, params) next to the certificates: not ours to check
        labels = sorted({m.group(1).decode() for m in blocks})
        return [finding(spec, "unparseable", path, f"holds no certificate, only "
                        f"{', '.join(labels)}")]
    out: list[Finding] = []
    for n, pem in enumerate(chain, 1):
        subject = f"{path}#{n}"
        try:
            cert = _pem(pem)
        except ValueError as e:
            out.append(finding(spec, "unparseable", subject, f"certificate {n} of "
                               f"{len(chain)} does not parse: {_first_line(e)}"))
            continue
        out.extend(grade(spec, certs, cert, subject, now))
    return out


def grade(spec: AuditSpec, certs: Certificates, cert: Certificate, subject: str,
          now: datetime) -> list[Finding]:
    not_after = cert.not_valid_after_utc
    not_before = cert.not_valid_before_utc
    left = (not_after - now).total_seconds()
    who = _name(cert)
    out = []
    if left <= 0:
        out.append(finding(spec, "expired", subject, f"{who} expired {_span(-left)} ago, on "
                           f"{not_after:%Y-%m-%d %H:%M} UTC", severity="critical"))
    elif left <= certs.within:
        out.append(finding(spec, "expiring", subject, f"{who} expires in {_span(left)}, on "
                           f"{not_after:%Y-%m-%d %H:%M} UTC (reported within "
                           f"{format_duration(certs.within)})"))
    if not_before > now:
        out.append(finding(spec, "not_yet_valid", subject, f"{who} is not valid before "
                           f"{not_before:%Y-%m-%d %H:%M} UTC"))
    return out


def _pem(data: bytes) -> Certificate:
    from cryptography import x509

    with warnings.catch_warnings(action="ignore"):  # e.g. old CAs' negative serial numbers
        return x509.load_pem_x509_certificate(data)


def _der(data: bytes) -> Certificate | None:
    from cryptography import x509

    try:
        with warnings.catch_warnings(action="ignore"):
            return x509.load_der_x509_certificate(data)
    except ValueError:
        return None


def _name(cert: Certificate) -> str:
    try:
        text = cert.subject.rfc4514_string()
    except ValueError:
        text = ""
    text = text or "(no subject)"
    return text if len(text) <= 80 else text[:79] + "…"


def _span(seconds: float) -> str:
    if seconds >= 1.5 * _DAY_S:
        return f"{round(seconds / _DAY_S)} days"
    if seconds >= 3600:
        return f"{round(seconds / 3600)} h"
    return f"{max(1, round(seconds / 60))} min"


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]
