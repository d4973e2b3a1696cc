"""The agent's own nftables table, ``table inet opsagent``, driven through ``nft -j``.

Changes go to ``nft -j -f -`` as one JSON document per call (one kernel transaction: all of
it or none of it); reads are ``nft -j list set …``. nft runs from an argv list, never a shell,
and this module touches no table but its own.

The table::

    table inet opsagent {
        set blocked4      { type ipv4_addr; size 1048576; flags timeout; }          # addresses
        set blocked6      { type ipv6_addr; size 1048576; flags timeout; }
        set blocked4_nets { type ipv4_addr; flags interval,timeout; }               # prefixes
        set blocked6_nets { type ipv6_addr; flags interval,timeout; }
        chain input   { type filter hook input priority filter - 10; policy accept;
                        ip saddr @blocked4 drop; ip saddr @blocked4_nets drop;
                        ip6 saddr @blocked6 drop; ip6 saddr @blocked6_nets drop }
        chain forward { type filter hook forward priority filter - 10; policy accept; … }
    }

``forward`` covers traffic routed to containers (Docker's published ports), priority -10 runs
before the usual filter chains, and every element carries a kernel ``timeout``: a block ends
on time even when the agent is down.

Why single addresses and prefixes live in separate sets (measured with nft 1.0.6 on kernel
6.x): ``flags interval,timeout`` is accepted, but nft checks each new interval against the
whole set in user space, so adding one address to an interval set holding 100,000 takes about
1.7 s, against 5 ms for a hash set; and an interval set refuses overlapping elements
("interval overlaps with an existing one"), even when the same transaction deletes the
element in the way (only a ``flush`` of the set lifts that). So addresses go to hash sets,
where an address inside a blocked prefix is no conflict, and prefixes go to small interval
sets that are always rewritten whole (``flush`` + ``add`` in one transaction) from a
disjoint layout computed by agent.firewall.blocks.

Kernel timeouts are whole seconds here: nft 1.0.6 takes a fractional JSON ``timeout`` as no
timeout at all (the element would never expire), so TTLs are rounded up to an integer.
Re-adding an element does not refresh its timeout on every kernel, so ``add`` sends
add (a no-op when present) + delete + add with the new timeout, in one transaction.

Set ``OPSAGENT_NFT`` (see agent.cli_blocks) to run nft elsewhere, e.g. inside a network
namespace: ``["ip", "netns", "exec", "ns1", "nft"]``.
"""

from __future__ import annotations

import ipaddress
import json
import math
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.errors import ProviderError, ProviderTimeout

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

FAMILY = "inet"
TABLE = "opsagent"
PRIORITY = -10
CHAINS = (("input", "input"), ("forward", "forward"))  # (name, hook)
SET_SIZE = 1 << 20  # hash sets' capacity; the Blocker's cap (100,000 by default) is far below
MAX_TTL_S = 365 * 86400
_ADDR_SET = {4: "blocked4", 6: "blocked6"}
_NET_SET = {4: "blocked4_nets", 6: "blocked6_nets"}
_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
_PROTO = {4: "ip", 6: "ip6"}
_MISSING = ("No such file or directory", "does not exist")


class NftError(ProviderError):
    """nft ran and refused (``stderr`` holds its message); other failures are plain
    ProviderErrors."""

    def __init__(self, message: str, stderr: str) -> None:
        super().__init__(message)
        self.stderr = stderr

    @property
    def missing(self) -> bool:
        """The table, set or element named does not exist."""
        return any(m in self.stderr for m in _MISSING)


@dataclass(frozen=True, slots=True)
class Element:
    """One element the kernel holds: a network (a /32 or /128 for an address), the seconds
    left before the kernel removes it (None: no timeout, added by someone else), and whether
    it sits in a prefix set (blocked4_nets, blocked6_nets) rather than an address set."""

    net: Network
    expires_s: float | None
    in_prefix_set: bool = False


def is_address(net: Network) -> bool:
    return net.prefixlen == net.max_prefixlen


def set_names() -> list[str]:
    return [_ADDR_SET[4], _NET_SET[4], _ADDR_SET[6], _NET_SET[6]]


def _ttl(ttl_s: float) -> int:
    """Whole seconds, at least 1 (a fractional JSON timeout would mean "never expires")."""
    if not math.isfinite(ttl_s) or ttl_s <= 0:
        raise ValueError(f"a kernel timeout must be positive, not {ttl_s!r}")
    return min(max(1, math.ceil(ttl_s)), MAX_TTL_S)


def _val(net: Network) -> Any:
    if is_address(net):
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln] or lines or ["(no message)"]
    line = "; ".join(errors)
    return line if len(line) <= 400 else line[:397] + "..."


class Nftables:
    """``table inet opsagent`` and its four sets, through one nft argv.

    ``nft`` is the argv that runs nft (``("nft",)``; a test passes
    ``("ip", "netns", "exec", NS, "nft")``). Every call ends within ``timeout_s``.
    """

    def __init__(self, nft: Sequence[str] = ("nft",), *, timeout_s: float = 30.0) -> None:
        if not nft or not all(isinstance(a, str) and a for a in nft):
            raise ValueError("nft must be a non-empty argv of non-empty strings")
        self.nft = tuple(nft)
        self.timeout_s = timeout_s

    # -- changes ---------------------------------------------------------------------------

    def ensure(self) -> None:
        """Create what is missing; keep every element. Our chains are rebuilt in the same
        transaction (flush + our rules), so a hand-edited or half-made chain is repaired and
        a repeat never duplicates a rule."""
        self._apply(self._ensure_commands())

    def add(self, net: Network, ttl_s: float) -> None:
        """Block ``net`` for ``ttl_s`` seconds; an element already there gets the new
        timeout. A prefix overlapping another prefix element is refused by nft
        (ProviderError); agent.firewall.blocks lays prefixes out with ``load_networks``."""
        elem = {"val": _val(net), "timeout": _ttl(ttl_s)}
        name = self._set_of(net)
        self._apply([self._elem("add", name, [{"val": _val(net), "timeout": 1}]),
                     self._elem("delete", name, [{"val": _val(net)}]),
                     self._elem("add", name, [elem])])

    def remove(self, net: Network) -> bool:
        """Unblock ``net``: True when the kernel held that exact element."""
        try:
            self._apply([self._elem("delete", self._set_of(net), [{"val": _val(net)}])])
        except NftError as e:
            if e.missing:
                return False
            raise
        return True

    def load_networks(self, version: int, entries: Sequence[tuple[Network, float]]) -> None:
        """Replace every prefix element of one IP version with ``entries`` (disjoint
        networks with their TTLs), atomically."""
        name = _NET_SET[version]
        cmds: list[dict[str, Any]] = [{"flush": {"set": self._set(name)}}]
        if entries:
            cmds.append(self._elem("add", name, [{"val": _val(n), "timeout": _ttl(t)}
                                                 for n, t in entries]))
        self._apply(cmds)

    def load(self, entries: Iterable[tuple[Network, float]]) -> None:
        """Make the table exist and hold exactly ``entries`` (addresses, and prefixes that do
        not overlap one another), in one transaction: what a restore does."""
        by_set: dict[str, list[dict[str, Any]]] = {name: [] for name in set_names()}
        for net, ttl_s in entries:
            by_set[self._set_of(net)].append({"val": _val(net), "timeout": _ttl(ttl_s)})
        cmds = self._ensure_commands()
        for name, elems in by_set.items():
            cmds.append({"flush": {"set": self._set(name)}})
            if elems:
                cmds.append(self._elem("add", name, elems))
        self._apply(cmds)

    def drop_table(self) -> bool:
        """Delete the whole table (and so every block); False when there was none."""
        try:
            self._apply([{"delete": {"table": {"family": FAMILY, "name": TABLE}}}])
        except NftError as e:
            if e.missing:
                return False
            raise
        return True

    # -- reads -----------------------------------------------------------------------------

    def elements(self) -> list[Element]:
        """Every element of the four sets; [] when the table does not exist."""
        found: list[Element] = []
        for name in set_names():
            found.extend(self.read_set(name))
        return found

    def read_set(self, name: str) -> list[Element]:
        if name not in set_names():
            raise ValueError(f"{name!r} is not one of opsagent's sets")
        try:
            out = self._run([*self.nft, "-j", "list", "set", FAMILY, TABLE, name], None)
        except NftError as e:
            if e.missing:
                return []
            raise
        try:
            doc = json.loads(out)
            return [e for item in doc.get("nftables", []) if "set" in item
                    for raw in item["set"].get("elem", [])
                    for e in _parse_elem(raw, name in _NET_SET.values())]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ProviderError(f"nft list set {name}: unexpected output ({e})") from e

    # -- plumbing --------------------------------------------------------------------------

    def _ensure_commands(self) -> list[dict[str, Any]]:
        cmds: list[dict[str, Any]] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
        for v in (4, 6):
            cmds.append({"add": {"set": {**self._set(_ADDR_SET[v]), "type": _TYPE[v],
                                         "flags": ["timeout"], "size": SET_SIZE}}})
            cmds.append({"add": {"set": {**self._set(_NET_SET[v]), "type": _TYPE[v],
                                         "flags": ["interval", "timeout"]}}})
        for chain, hook in CHAINS:
            ref = {"family": FAMILY, "table": TABLE, "name": chain}
            cmds.append({"add": {"chain": {**ref, "type": "filter", "hook": hook,
                                           "prio": PRIORITY, "policy": "accept"}}})
            cmds.append({"flush": {"chain": ref}})
            for v in (4, 6):
                for name in (_ADDR_SET[v], _NET_SET[v]):
                    cmds.append({"add": {"rule": {
                        "family": FAMILY, "table": TABLE, "chain": chain,
                        "expr": [{"match": {"op": "==", "left": {"payload": {
                            "protocol": _PROTO[v], "field": "saddr"}}, "right": f"@{name}"}},
                            {"drop": None}]}}})
        return cmds

    @staticmethod
    def _set_of(net: Network) -> str:
        return (_ADDR_SET if is_address(net) else _NET_SET)[net.version]

    @staticmethod
    def _set(name: str) -> dict[str, Any]:
        return {"family": FAMILY, "table": TABLE, "name": name}

    def _elem(self, op: str, name: str, elems: list[dict[str, Any]]) -> dict[str, Any]:
        return {op: {"element": {**self._set(name), "elem": [{"elem": e} for e in elems]}}}

    def _apply(self, cmds: list[dict[str, Any]]) -> None:
        self._run([*self.nft, "-j", "-f", "-"], json.dumps({"nftables": cmds}))

    def _run(self, argv: list[str], stdin: str | None) -> str:
        what = " ".join(argv[len(self.nft):][:5])
        try:
            res = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                                 timeout=self.timeout_s, stdin=None if stdin is not None
                                 else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ProviderTimeout(f"nft {what}: no answer within {self.timeout_s:g}s") from None
        except OSError as e:
            raise ProviderError(f"cannot run {self.nft[0]}: {e.strerror or e}") from e
        if res.returncode != 0:
            raise NftError(f"nft {what} failed ({res.returncode}): {_one_line(res.stderr)}",
                           res.stderr)
        return res.stdout


def _parse_elem(raw: Any, in_prefix_set: bool) -> list[Element]:
    """nft's JSON element forms: "1.2.3.4", {"prefix": …}, {"range": […]}, or
    {"elem": {"val": <one of those>, "timeout": s, "expires": s}}."""
    expires: float | None = None
    val = raw
    if isinstance(raw, dict) and "elem" in raw:
        inner = raw["elem"]
        val = inner["val"]
        if "expires" in inner:
            expires = float(inner["expires"])
        elif "timeout" in inner:
            expires = float(inner["timeout"])
    if isinstance(val, str):
        return [Element(ipaddress.ip_network(val), expires, in_prefix_set)]
    if isinstance(val, dict) and "prefix" in val:
        p = val["prefix"]
        return [Element(ipaddress.ip_network(f"{p['addr']}/{int(p['len'])}"), expires,
                        in_prefix_set)]
    if isinstance(val, dict) and "range" in val:
        first, last = (ipaddress.ip_address(a) for a in val["range"])
        return [Element(n, expires, in_prefix_set)
                for n in ipaddress.summarize_address_range(first, last)]
    raise ValueError(f"unknown element form {raw!r}")
