"""``listening_ports``: sockets that accept traffic and are not on the allowlist.

Listening TCP sockets, and UDP sockets bound without a peer (a connected UDP socket, like a
resolver's, takes datagrams from its peer only). Read from psutil's socket table of this
host's network namespace. Several sockets on one address and port (prefork servers,
SO_REUSEPORT) are one finding naming every process. Without root, sockets of other users'
processes are listed without their pid: the detail says so.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from agent.audits import Finding, finding
from agent.playbook.models.audits import AuditSpec, PortRule, normalize_address


@dataclass
class _Listener:
    protocol: str
    address: str
    port: int
    pids: set[int] = field(default_factory=set)

    @property
    def subject(self) -> str:
        return socket_name(self.protocol, self.address, self.port)


def socket_name(protocol: str, address: str, port: int) -> str:
    """'tcp/0.0.0.0:8080', 'udp/[::1]:53'."""
    return f"{protocol}/{endpoint(address, port)}"


def endpoint(address: str, port: int) -> str:
    """'0.0.0.0:8080', '[::1]:53'."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def audit_listening_ports(spec: AuditSpec, deadline: float) -> list[Finding]:
    ports = spec.listening_ports
    assert ports is not None
    out = []
    for listener in observe_listeners().values():
        if _allowed(ports.allow, listener):
            continue
        state = "listening" if listener.protocol == "tcp" else "bound, receiving from anyone"
        where = endpoint(listener.address, listener.port)
        out.append(finding(spec, "listening", listener.subject,
                           f"{listener.protocol} {where} {state}, not in the allowlist; "
                           f"{_owners(listener.pids)}"))
    return out


def _allowed(allow: list[PortRule], listener: _Listener) -> bool:
    return any(rule.covers(listener.protocol, listener.address, listener.port)
               for rule in allow)


def observe_listeners() -> dict[str, _Listener]:
    """Listening TCP and unconnected bound UDP sockets by subject, with their pids."""
    import psutil

    found: dict[str, _Listener] = {}
    for conn in psutil.net_connections(kind="inet"):
        if not conn.laddr:
            continue
        if conn.type == socket.SOCK_STREAM and conn.status == psutil.CONN_LISTEN:
            protocol = "tcp"
        elif conn.type == socket.SOCK_DGRAM and not conn.raddr:
            protocol = "udp"
        else:
            continue
        address = normalize_address(conn.laddr.ip)
        listener = _Listener(protocol, address, conn.laddr.port)
        listener = found.setdefault(listener.subject, listener)
        if conn.pid is not None:
            listener.pids.add(conn.pid)
    return found


def _owners(pids: set[int]) -> str:
    if not pids:
        if os.geteuid() != 0:
            return "process unknown (another user's: run as root to see it)"
        return "no process of this pid namespace holds it (a container's, or the kernel's)"
    return ", ".join(f"pid {pid} ({process_name(pid)})" for pid in sorted(pids))


def process_name(pid: int) -> str:
    import psutil

    try:
        return psutil.Process(pid).name()
    except psutil.Error:  # gone, or not ours to look at
        return "?"
