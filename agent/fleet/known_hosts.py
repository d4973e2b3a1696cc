"""known_hosts as OpenSSH reads it: hashed names, ``*``/``?`` wildcards, ``!`` negations,
``@revoked``; and appending a newly accepted key (``accept_new``)."""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import paramiko


@dataclass(frozen=True)
class KnownKey:
    file: str
    line: int
    key: paramiko.PKey
    revoked: bool


def fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


def name_matches(name: str, patterns: str) -> bool:
    """OpenSSH's known_hosts host field: hashed names, * and ? wildcards, !negations, commas."""
    hit = False
    for pattern in patterns.split(","):
        if pattern.startswith("|1|"):
            with suppress(ValueError, IndexError, binascii.Error):  # damaged: matches nothing
                hit = hit or paramiko.HostKeys.hash_host(name, pattern) == pattern
            continue
        negated = pattern.startswith("!")
        glob = re.escape(pattern.lstrip("!").lower()).replace(r"\*", ".*").replace(r"\?", ".")
        if re.fullmatch(glob, name.lower(), re.DOTALL):
            if negated:
                return False
            hit = True
    return hit


def read_known_keys(files: Sequence[str], name: str) -> list[KnownKey]:
    """Every key known_hosts files hold for name (``addr`` or ``[addr]:port``), in order.

    A missing file holds none; lines paramiko cannot read (other key types, @cert-authority)
    are skipped. OSError for a file that exists but cannot be read.
    """
    found: list[KnownKey] = []
    for file in files:
        try:
            text = Path(file).read_text(errors="replace")
        except FileNotFoundError:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            marker = fields.pop(0) if fields and fields[0].startswith("@") else ""
            if len(fields) < 3 or fields[0].startswith("#") or marker not in ("", "@revoked"):
                continue
            if not name_matches(name, fields[0]):
                continue
            try:
                key = paramiko.PKey.from_type_string(fields[1], base64.b64decode(fields[2]))
            except (paramiko.SSHException, ValueError, binascii.Error):
                continue
            found.append(KnownKey(file, lineno, key, marker == "@revoked"))
    return found


def append_known_host(file: str, name: str, key: paramiko.PKey) -> None:
    path = Path(file).expanduser()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        lead = b""
        if size:
            f.seek(size - 1)
            lead = b"" if f.read(1) == b"\n" else b"\n"
        f.write(lead + f"{name} {key.get_name()} {key.get_base64()}\n".encode())
