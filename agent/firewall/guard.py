"""What may be blocked: strict parsing of a target, and the networks that never are.

``parse_target(text)`` accepts one IPv4 or IPv6 address or CIDR network written with address
characters only (digits, hex letters, ``.``, ``:``, ``/``): no spaces, no zone ids
(``fe80::1%eth0``), no host names; anything else is a ValueError saying what was expected.
Host bits are cleared (``10.0.0.5/8`` is ``10.0.0.0/8``), an IPv4-mapped IPv6 address
(``::ffff:1.2.3.4``) is the IPv4 address (the kernel sees those packets as IPv4), and IPv6 is
normalised (``2001:DB8:0:0::1`` is ``2001:db8::1``).

``Protected.reason(net)`` says why a network must never be blocked; a request that merely
*contains* a protected address (``0.0.0.0/0``, a /8 around the host) is refused too. Protected
are:

* loopback (127.0.0.0/8, ::1);
* every address of this host (psutil.net_if_addrs), and, when ``addresses_argv`` is given, of
  the place where nft acts (``ip -j addr`` run through that argv, e.g. in a namespace);
* the collector's addresses (its URL's host, resolved), management networks, the playbooks'
  ``allowlist``;
* the peers of established connections to sshd (its listening ports, and 22), so a responder
  working over SSH never locks themselves out;
* the default gateways (/proc/net/route, /proc/net/ipv6_route) and the DNS servers of
  /etc/resolv.conf: blocking them cuts the host off the network or from name resolution;
* ranges that are never a sensible source to block: the unspecified and "this network"
  addresses (0.0.0.0/8, ::), multicast (224.0.0.0/4, ff00::/8: never a source address; a
  block there is a mistake), the limited broadcast, and link-local (169.254.0.0/16,
  fe80::/10): IPv6 neighbour discovery and router advertisements come from link-local
  addresses, and cloud metadata services live at 169.254.169.254.

The lists are gathered once, when ``Protected.for_host`` is called: the agent builds a new one
when its playbooks reload (and may before each block; it takes milliseconds).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_TARGET_CHARS = re.compile(r"[0-9A-Fa-f:./]+")
_MAX_TARGET = 64  # the longest address/prefix text is 49 characters
_EXPECTED = "expected an IP address or CIDR network, e.g. 203.0.113.7, 2001:db8::7 or " \
            "198.51.100.0/24"

ALWAYS: tuple[tuple[str, str], ...] = (
    ("127.0.0.0/8", "loopback"),
    ("::1/128", "loopback"),
    ("0.0.0.0/8", "the unspecified / this-network range"),
    ("::/128", "the unspecified address"),
    ("169.254.0.0/16", "link-local (neighbours, DHCP, cloud metadata)"),
    ("fe80::/10", "link-local (IPv6 neighbour discovery and router advertisements)"),
    ("224.0.0.0/4", "multicast (never a source address)"),
    ("ff00::/8", "multicast (never a source address)"),
    ("255.255.255.255/32", "the limited broadcast address"),
)


def _shown(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def parse_target(text: str) -> Network:
    """One address or CIDR network, strictly; ValueError with a message otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not text ({_EXPECTED})")
    if not text:
        raise ValueError(f"an empty address ({_EXPECTED})")
    if text != text.strip():
        raise ValueError(f"{_shown(text)} has spaces around it ({_EXPECTED})")
    if "%" in text:
        raise ValueError(f"{_shown(text)} has a zone id; zone ids are not accepted "
                         f"({_EXPECTED})")
    if len(text) > _MAX_TARGET or not _TARGET_CHARS.fullmatch(text):
        raise ValueError(f"{_shown(text)} is not an IP address or network ({_EXPECTED})")
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{_shown(text)} is not an IP address or network "
                         f"({_EXPECTED})") from None
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    return net


def format_net(net: Network) -> str:
    """``203.0.113.7`` for an address, ``198.51.100.0/24`` for a network."""
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def _as_net(addr: str) -> Network | None:
    """An address from the system (may carry a zone id or be IPv4-mapped) as a /32 or /128."""
    try:
        a = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    return ipaddress.ip_network(a)


@dataclass(frozen=True, slots=True)
class ProtectedNet:
    net: Network
    why: str


class Protected:
    """Networks that can never be blocked, each with the reason why."""

    def __init__(self, entries: Iterable[tuple[Network | str, str]],
                 warnings: Sequence[str] = ()) -> None:
        found: list[ProtectedNet] = []
        seen: set[tuple[Network, str]] = set()
        for net, why in [*ALWAYS, *entries]:
            n = ipaddress.ip_network(net, strict=False) if isinstance(net, str) else net
            if (n, why) not in seen:
                seen.add((n, why))
                found.append(ProtectedNet(n, why))
        self.entries: tuple[ProtectedNet, ...] = tuple(found)
        self.warnings: tuple[str, ...] = tuple(warnings)  # sources that could not be read

    @classmethod
    def for_host(cls, *, collector_url: str | None = None, management: Sequence[str] = (),
                 allowlist: Sequence[str] = (), addresses_argv: Sequence[str] | None = None,
                 ssh_ports: Iterable[int] = (), resolve_timeout_s: float = 3.0) -> Protected:
        """Gather everything listed in the module docstring. ``management`` and ``allowlist``
        are CIDR strings (ValueError when one is not); ``ssh_ports`` adds ports whose
        established peers are protected like sshd's."""
        entries: list[tuple[Network | str, str]] = []
        warnings: list[str] = []
        for items, why in ((management, "a management network"),
                           (allowlist, "in the allowlist")):
            for item in items:
                try:
                    entries.append((ipaddress.ip_network(item, strict=False), why))
                except ValueError:
                    raise ValueError(f"{_shown(item)} is not an IP address or network "
                                     f"({_EXPECTED})") from None
        entries += [(n, f"an address of this host ({ifname})") for n, ifname in host_addresses()]
        if addresses_argv is not None:
            try:
                entries += [(n, f"an address of this host ({ifname})")
                            for n, ifname in ip_addresses(addresses_argv)]
            except OSError as e:
                warnings.append(f"the addresses of {' '.join(addresses_argv)} are unknown: {e}")
        if collector_url:
            nets, problem = collector_addresses(collector_url, resolve_timeout_s)
            entries += [(n, f"the collector ({urlsplit(collector_url).hostname})")
                        for n in nets]
            if problem:
                warnings.append(problem)
        entries += [(n, "the peer of an SSH session to this host")
                    for n in session_peers(set(ssh_ports))]
        entries += [(n, "a default gateway") for n in default_gateways()]
        entries += [(n, "a DNS server (/etc/resolv.conf)") for n in nameservers()]
        return cls(entries, warnings)

    def reason(self, net: Network) -> str | None:
        """Why ``net`` must not be blocked, or None when it may be."""
        for p in self.entries:
            if p.net.version != net.version or not net.overlaps(p.net):
                continue
            if net == p.net:
                return f"{format_net(net)} is protected: {p.why}"
            if net.subnet_of(p.net):  # type: ignore[arg-type]
                return f"{format_net(net)} is inside {format_net(p.net)}, protected: {p.why}"
            return f"{format_net(net)} contains {format_net(p.net)}, protected: {p.why}"
        return None


# -- sources -----------------------------------------------------------------------------

def host_addresses() -> list[tuple[Network, str]]:
    import psutil

    return [(n, ifname) for ifname, addrs in psutil.net_if_addrs().items()
            for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)
            if (n := _as_net(a.address)) is not None]


def ip_addresses(ip_argv: Sequence[str], timeout_s: float = 10.0) -> list[tuple[Network, str]]:
    """Addresses listed by ``ip -j addr show`` run through ``ip_argv`` (e.g. in a namespace);
    OSError when it cannot be run or answers nonsense."""
    try:
        res = subprocess.run([*ip_argv, "-j", "addr", "show"], capture_output=True, text=True,
                             timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise OSError(f"no answer within {timeout_s:g}s") from None
    if res.returncode != 0:
        raise OSError(res.stderr.strip().splitlines()[-1] if res.stderr.strip() else
                      f"exit status {res.returncode}")
    try:
        return [(n, str(link.get("ifname", "?"))) for link in json.loads(res.stdout)
                for a in link.get("addr_info", [])
                if (n := _as_net(str(a.get("local", "")))) is not None]
    except (ValueError, AttributeError, TypeError) as e:
        raise OSError(f"unexpected output of ip -j addr: {e}") from None


def collector_addresses(url: str, timeout_s: float) -> tuple[list[Network], str | None]:
    """The collector's addresses, and a problem when its host could not be resolved."""
    host = urlsplit(url).hostname
    if not host:
        return [], f"the collector URL {url!r} names no host"
    if (n := _as_net(host)) is not None:
        return [n], None
    found: list[Network] = []
    error: list[str] = []

    def resolve() -> None:  # getaddrinfo has no timeout of its own
        try:
            for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP):
                if (n := _as_net(str(info[4][0]))) is not None:
                    found.append(n)
        except OSError as e:
            error.append(str(e))

    t = threading.Thread(target=resolve, daemon=True, name="resolve-collector")
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        return [], f"the collector's host {host} did not resolve within {timeout_s:g}s"
    if error or not found:
        return [], f"the collector's host {host} did not resolve: {error[0] if error else '-'}"
    return sorted(set(found), key=str), None


def session_peers(extra_ports: set[int] | None = None) -> list[Network]:
    """Remote addresses of established TCP connections to sshd (the ports it listens on,
    and 22) or to ``extra_ports``."""
    import psutil

    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return []
    ports = {22, *(extra_ports or ())}
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.pid and _is_sshd(c.pid):
            ports.add(c.laddr.port)
    return sorted({n for c in conns if c.status == psutil.CONN_ESTABLISHED and c.raddr
                   and c.laddr and c.laddr.port in ports
                   if (n := _as_net(c.raddr.ip)) is not None}, key=str)


def _is_sshd(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).name().startswith("sshd")
    except psutil.Error:
        return False


def default_gateways(proc: str = "/proc/net") -> list[Network]:
    found: set[Network] = set()
    try:
        with open(os.path.join(proc, "route")) as fh:
            for line in fh.readlines()[1:]:
                f = line.split()
                if len(f) > 2 and f[1] == "00000000" and f[2] != "00000000":
                    n = _as_net(str(ipaddress.IPv4Address(bytes.fromhex(f[2])[::-1])))
                    found.update([n] if n else [])
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(proc, "ipv6_route")) as fh:
            for line in fh:
                f = line.split()
                if len(f) > 4 and f[1] == "00" and int(f[4], 16) != 0:
                    n = _as_net(str(ipaddress.IPv6Address(bytes.fromhex(f[4]))))
                    found.update([n] if n else [])
    except (OSError, ValueError):
        pass
    return sorted(found, key=str)


def nameservers(path: str = "/etc/resolv.conf") -> list[Network]:
    found: list[Network] = []
    try:
        with open(path) as fh:
            for line in fh:
                f = line.split()
                if len(f) >= 2 and f[0] == "nameserver" and (n := _as_net(f[1])) is not None:
                    found.append(n)
    except OSError:
        pass
    return found
