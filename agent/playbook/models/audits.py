"""`audits:` — periodic security audits of the host: world-writable paths, readable secrets,
unexpected listening ports, expiring certificates. They observe and report findings; they
never change the host.

Port allowlist entries are parsed here, once, into `PortRule`s: a bad entry is refused when
the playbook loads, with its position, not when the audit first runs.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from agent.playbook.models.base import Spec
from agent.playbook.types import Duration, format_duration

AUDIT_KINDS = ("world_writable", "secrets_readable", "listening_ports", "certificates")
Protocol = Literal["tcp", "udp"]
_PROTOCOLS: dict[str, Protocol] = {"tcp": "tcp", "udp": "udp"}

# PORT | ADDR:PORT | [V6]:PORT, each optionally /PROTO; or a bare PROTO (every port of it).
_PORT_RULE = re.compile(r"^(?:(?:(?P<v4>\d{1,3}(?:\.\d{1,3}){3}):|\[(?P<v6>[0-9A-Fa-f:.]+)\]:)?"
                        r"(?P<port>\d{1,5})(?:/(?P<proto>tcp|udp))?|(?P<only>tcp|udp))$")
# Without Python's group names: editors compile schema patterns as JavaScript regexes.
PORT_RULE_PATTERN = re.sub(r"\?P<\w+>", "", _PORT_RULE.pattern)
_PORT_RULE_FORMS = ("a port (22), PORT/PROTO (53/udp), ADDR:PORT (127.0.0.1:5432; IPv6 in "
                    "brackets: [::1]:6379), either with /tcp or /udp, or a protocol alone (udp)")


@dataclass(frozen=True, slots=True)
class PortRule:
    """One allowlist entry; None in a field means "any"."""

    port: int | None
    protocol: Protocol | None = None
    address: str | None = None  # compressed text form (ipaddress), no brackets

    def covers(self, protocol: str, address: str, port: int) -> bool:
        """Does this entry allow a socket of ``protocol`` bound to ``address``:``port``?

        An address entry covers that exact bound address only: 0.0.0.0:5432 is not covered
        by 127.0.0.1:5432 (it is reachable from everywhere), nor :: by 0.0.0.0.
        """
        if self.protocol is not None and self.protocol != protocol:
            return False
        if self.port is not None and self.port != port:
            return False
        return self.address is None or self.address == normalize_address(address)

    def __str__(self) -> str:
        if self.port is None:
            return str(self.protocol)
        text = str(self.port)
        if self.address is not None:
            host = f"[{self.address}]" if ":" in self.address else self.address
            text = f"{host}:{text}"
        return f"{text}/{self.protocol}" if self.protocol else text


def normalize_address(address: str) -> str:
    """The canonical text of an IP address ('::0001' -> '::1'); other text unchanged."""
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).compressed
    except ValueError:
        return address


def parse_port_rule(value: Any) -> PortRule:
    """80, "80", "80/tcp", "udp", "127.0.0.1:5432", "[::1]:6379/tcp" -> PortRule."""
    if isinstance(value, PortRule):
        return value
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{value!r} is not a port rule (expected {_PORT_RULE_FORMS})")
    if isinstance(value, int):
        return PortRule(_port(value, value))
    text = value.strip()
    m = _PORT_RULE.match(text)
    if m is None:
        hint = _PORT_RULE_FORMS
        if text.count(":") > 1 and not text.startswith("["):
            hint = "an IPv6 address goes in brackets, e.g. [::1]:6379"
        raise ValueError(f"{value!r} is not a port rule (expected {hint})")
    if m["only"]:
        return PortRule(None, _PROTOCOLS[m["only"]])
    address = None
    if m["v4"] or m["v6"]:
        raw = m["v4"] or m["v6"]
        try:
            ip = ipaddress.ip_address(raw)
        except ValueError:
            raise ValueError(f"{value!r}: {raw!r} is not an IP address "
                             f"(expected {_PORT_RULE_FORMS})") from None
        address = ip.compressed
    protocol = _PROTOCOLS[m["proto"]] if m["proto"] else None
    return PortRule(_port(int(m["port"]), value), protocol, address)


def _port(port: int, value: Any) -> int:
    if not 1 <= port <= 65535:
        raise ValueError(f"{value!r}: port {port} is out of range (expected 1 to 65535)")
    return port


PortRuleField = Annotated[
    PortRule,
    PlainValidator(parse_port_rule),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1, "maximum": 65535},
                              {"type": "string", "pattern": PORT_RULE_PATTERN,
                               "x-expected": _PORT_RULE_FORMS}],
                    "examples": [22, "53/udp", "127.0.0.1:5432", "[::1]:6379"]}),
]


def _absolute(paths: list[str]) -> list[str]:
    for p in paths:
        if not os.path.isabs(p):
            raise ValueError(f"path {p!r} must be absolute (expected e.g. /etc)")
    return paths


class TreeScan(Spec):
    """Directory trees walked without following symlinks below the roots, staying on each
    root's filesystem. A directory that cannot be listed is an `unreadable` finding (severity
    info): what is under it was not audited."""

    paths: list[str] = Field(min_length=1, description="Files or directories to walk "
                             "(absolute). A root that does not exist holds nothing to report.",
                             examples=[["/etc", "/usr/local/bin"]])
    exclude: list[str] = Field(default_factory=list, description="Glob patterns skipped (a "
                               "directory with its contents). A pattern with a / matches the "
                               "whole path, one without matches the name.",
                               examples=[["/etc/alternatives/*", "*.bak"]])
    max_files: int = Field(200000, ge=1, description="Entries examined at most; past it the "
                           "scan stops and one finding says it was cut short.",
                           examples=[200000])

    @field_validator("paths")
    @classmethod
    def _paths(cls, paths: list[str]) -> list[str]:
        return _absolute(paths)


class WorldWritable(TreeScan):
    """Files and directories writable by others (o+w). A directory with the sticky bit (like
    /tmp) is not reported; one without it is."""


class SecretsReadable(TreeScan):
    """Files whose names match `patterns`, checked for access by others than their owner.

    Readable or writable by others (o+r, o+w): a finding at the audit's severity. Otherwise
    readable or writable by a group other than root (gid 0): a finding one severity lower
    (critical -> warning -> info). At most one finding per file.
    """

    patterns: list[str] = Field(min_length=1, description="Glob patterns of secret files: one "
                                "with a / matches the whole path, one without the name.",
                                examples=[["*.env", "*.key", "*.pem"]])


class ListeningPorts(Spec):
    """Listening TCP sockets and bound (unconnected) UDP sockets not covered by `allow`."""

    allow: list[PortRuleField] = Field(
        default_factory=list, description="Expected sockets: 22 (any address, tcp or udp), "
        "\"80/tcp\", \"53/udp\", \"127.0.0.1:5432\", \"[::1]:6379\" (that bound address only; "
        "0.0.0.0 and :: are addresses like any other), \"udp\" (every UDP port).",
        examples=[[22, "80/tcp", "127.0.0.1:5432", "[::1]:6379", "53/udp"]])


class Certificates(Spec):
    """PEM certificates expiring within `within`, expired, unreadable or unparseable."""

    paths: list[str] = Field(min_length=1, description="Certificate files, globs, or "
                             "directories (walked for *.pem, *.crt, *.cer, *.cert files; files "
                             "there holding only keys are skipped). Every certificate of a "
                             "chain file is checked.",
                             examples=[["/etc/ssl/private/*.pem", "/etc/nginx/certs"]])
    within: Duration = Field(2592000.0, description="Report certificates expiring within this.",
                             examples=["30d"])
    max_files: int = Field(10000, ge=1, description="Files looked at, at most (in directories: "
                           "every file, certificate or not); past it the scan stops and one "
                           "finding says it was cut short.", examples=[10000])

    @field_validator("paths")
    @classmethod
    def _paths(cls, paths: list[str]) -> list[str]:
        return _absolute(paths)


class AuditSpec(Spec):
    """One security audit, run on an interval; exactly one kind per audit."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", examples=["world-writable"])
    interval: Duration = Field(3600.0, description="How often the agent runs it (at least 1m).",
                               examples=["1h"])
    timeout: Duration = Field(300.0, description="A scan still running after this stops and "
                              "reports that it was cut short.", examples=["5m"])
    severity: Literal["info", "warning", "critical"] = Field(
        "warning", description="Severity of its findings (expired certificates are critical).")
    notify: list[str] | None = Field(None, description="Notifiers told about new findings.",
                                     examples=[["security"]])
    world_writable: WorldWritable | None = None
    secrets_readable: SecretsReadable | None = None
    listening_ports: ListeningPorts | None = None
    certificates: Certificates | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> AuditSpec:
        given = [k for k in AUDIT_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one audit kind: {', '.join(AUDIT_KINDS)} "
                             f"(got {len(given)})")
        return self

    @field_validator("interval")
    @classmethod
    def _interval(cls, seconds: float) -> float:
        if seconds < 60:
            raise ValueError(f"interval {format_duration(seconds)} is too short "
                             "(expected at least 1m: audits walk trees)")
        return seconds

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, seconds: float) -> float:
        if seconds <= 0:
            raise ValueError("timeout must be above 0s (expected e.g. 5m)")
        return seconds

    @property
    def kind(self) -> str:
        return next(k for k in AUDIT_KINDS if getattr(self, k) is not None)
