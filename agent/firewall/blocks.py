"""IP blocks the agent owns: recorded in state.db, enforced by nftables, ended by the kernel.

``Blocker.block(target, ttl_s, rule=…, reason=…)`` parses and guards the target first (a
refusal changes nothing), then writes the ``blocks`` row (a repeat extends ``until``), then
tells the kernel. The kernel element carries the TTL, so a block ends on time whether or not
the agent runs; after an agent or host restart ``restore()`` puts back every unexpired block
with what is left of its TTL (one nft transaction) and forgets the expired rows.

Prefixes may nest (an operator blocks 198.51.100.0/24 while a watch has blocked one address
in it for longer). nft's interval sets refuse overlapping elements, so the kernel holds a
*layout*: the union of the active prefix blocks cut into disjoint CIDRs, each with the latest
``until`` of the blocks covering it, rewritten whole on every prefix change. Every address is
then blocked exactly as long as the longest block covering it. Single addresses live in their
own sets (agent.firewall.nft) and never conflict with prefixes.

Limits: TTL from 1 s to 365 days; at most ``max_blocks`` (100,000) active blocks, past that a
new one is refused with the reason (extending an existing one still works). Kernel writers
(the agent service, ``opsagent blocks``) take STATE_DIR/firewall.lock, so a layout is always
computed from the rows as they are when it is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import ipaddress
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from agent import statedb
from agent.errors import ProviderError
from agent.firewall.guard import Protected, format_net, parse_target
from agent.firewall.nft import Network, Nftables, NftError, is_address

MIN_TTL_S = 1.0
MAX_TTL_S = 365 * 86400.0
MAX_BLOCKS = 100_000
LOCK_NAME = "firewall.lock"
_TEXT_MAX = 500

Status = Literal["blocked", "extended", "kept", "refused", "failed"]
Rows = list[tuple[Network, float]]  # networks with their `until`
Blocks = list["Block"]


@dataclass(frozen=True, slots=True)
class BlockOutcome:
    """What ``block`` did. ``blocked``/``extended`` changed something; ``kept``: an existing
    block already lasts longer; ``refused``: nothing changed (``message`` says why);
    ``failed``: recorded, but nft failed (``restore`` retries it)."""

    target: str
    addr: str | None
    status: Status
    message: str
    until: float | None = None

    @property
    def changed(self) -> bool:
        return self.status in ("blocked", "extended")


@dataclass(frozen=True, slots=True)
class Block:
    """One entry of ``list``: ``active`` (recorded, kernel has it), ``missing`` (recorded,
    the kernel lacks it: not enforced until ``restore``), ``untracked`` (in the kernel, not
    recorded: added by hand or left behind)."""

    addr: str
    status: Literal["active", "missing", "untracked"]
    until: float | None
    rule: str
    reason: str
    origin: str
    created: float | None
    kernel_expires_s: float | None

    def remaining_s(self, now: float | None = None) -> float | None:
        if self.until is None:
            return self.kernel_expires_s
        return max(0.0, self.until - (time.time() if now is None else now))


@dataclass(frozen=True, slots=True)
class Unblocked:
    addr: str
    removed: bool  # a recorded block was removed
    covered_by: tuple[str, ...] = ()  # recorded prefix blocks that still cover addr


@dataclass(frozen=True, slots=True)
class Restored:
    restored: int
    expired: int


def _clean(text: str) -> str:
    text = "".join(c if c.isprintable() else "?" for c in str(text))
    return text if len(text) <= _TEXT_MAX else text[:_TEXT_MAX - 3] + "..."


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))


def layout(rows: Sequence[tuple[Network, float]]) -> list[tuple[Network, float]]:
    """Disjoint CIDRs covering the union of ``rows`` (networks of one IP version, with their
    ``until``), each carrying the latest ``until`` of the rows that cover it."""
    if not rows:
        return []
    spans = sorted((int(n.network_address), int(n.broadcast_address) + 1, u) for n, u in rows)
    version = rows[0][0].version
    cuts = sorted({s for s, _, _ in spans} | {e for _, e, _ in spans})
    heap: list[tuple[float, int]] = []  # (-until, end) of spans started
    ranges: list[tuple[int, int, float]] = []
    i = 0
    for lo, hi in zip(cuts, cuts[1:], strict=False):
        while i < len(spans) and spans[i][0] <= lo:
            heapq.heappush(heap, (-spans[i][2], spans[i][1]))
            i += 1
        while heap and heap[0][1] <= lo:
            heapq.heappop(heap)
        if not heap:
            continue
        until = -heap[0][0]
        if ranges and ranges[-1][1] == lo and ranges[-1][2] == until:
            ranges[-1] = (ranges[-1][0], hi, until)
        else:
            ranges.append((lo, hi, until))
    addr = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    return [(n, until) for lo, hi, until in ranges
            for n in ipaddress.summarize_address_range(addr(lo), addr(hi - 1))]


class Blocker:
    """Blocks of one host: state in ``state_dir``, enforcement through ``nft``."""

    def __init__(self, state_dir: str, nft: Nftables, protected: Protected, *,
                 max_blocks: int = MAX_BLOCKS, clock: Callable[[], float] = time.time) -> None:
        self.state_dir = state_dir
        self.nft = nft
        self.protected = protected
        self.max_blocks = max_blocks
        self.clock = clock
        self._ensured = False

    # -- changes ---------------------------------------------------------------------------

    def block(self, target: str, ttl_s: float, *, rule: str, reason: str,
              origin: str = "local") -> BlockOutcome:
        """Block ``target`` (text from a log, an operator, a runbook) for ``ttl_s`` seconds.
        Never raises for bad input: a refusal is an outcome. ``rule`` names what asked,
        ``origin`` where it came from (``local``, ``cli:USER``, a runbook's incident id)."""
        try:
            net = parse_target(target)
        except ValueError as e:
            return BlockOutcome(target, None, "refused", str(e))
        addr = format_net(net)
        if not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
            return BlockOutcome(target, addr, "refused", f"a block lasts from 1s to 365d, "
                                f"not {ttl_s:g}s")
        if (why := self.protected.reason(net)) is not None:
            return BlockOutcome(target, addr, "refused", why)
        now = self.clock()
        with self._db() as db:
            with statedb.transaction(db):
                db.execute("DELETE FROM blocks WHERE until <= ?", (now,))
                row = db.execute("SELECT until FROM blocks WHERE addr = ?", (addr,)).fetchone()
                if row is None:
                    (active,) = db.execute("SELECT COUNT(*) FROM blocks").fetchone()
                    if active >= self.max_blocks:
                        return BlockOutcome(target, addr, "refused", f"{self.max_blocks} "
                                            "blocks are active, the most allowed; "
                                            f"{addr} was not blocked")
                until = now + ttl_s
                if row is not None and row[0] >= until:
                    status: Status = "kept"
                    until = row[0]
                else:
                    status = "blocked" if row is None else "extended"
                    db.execute("INSERT INTO blocks (addr, until, rule, reason, origin, created)"
                               " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (addr) DO UPDATE SET "
                               "until = excluded.until, rule = excluded.rule, "
                               "reason = excluded.reason, origin = excluded.origin",
                               (addr, until, _clean(rule), _clean(reason), _clean(origin), now))
            try:
                with self._kernel_lock():
                    self._enforce(db, net)
            except ProviderError as e:
                return BlockOutcome(target, addr, "failed", f"{addr} is recorded until "
                                    f"{_when(until)} but not enforced: {e}", until)
        verb = {"blocked": "blocked", "extended": "block extended",
                "kept": "already blocked"}[status]
        return BlockOutcome(target, addr, status, f"{addr} {verb} until {_when(until)}", until)

    def unblock(self, target: str) -> Unblocked:
        """End the block recorded for exactly ``target``; ValueError when it is not an
        address or network. The kernel element goes too (also an untracked one)."""
        net = parse_target(target)
        addr = format_net(net)
        with self._db() as db:
            with statedb.transaction(db):
                removed = db.execute("DELETE FROM blocks WHERE addr = ?", (addr,)).rowcount > 0
            with self._kernel_lock():
                if is_address(net):
                    self.nft.remove(net)
                else:
                    self._enforce(db, net)
            covering = self._covering(db, net)
        return Unblocked(addr, removed, covering)

    def restore(self) -> Restored:
        """Make the kernel hold exactly the unexpired blocks, with their remaining TTLs (the
        table is created when missing); forget the expired ones. One transaction."""
        now = self.clock()
        with self._db() as db:
            with statedb.transaction(db):
                expired = db.execute("DELETE FROM blocks WHERE until <= ?", (now,)).rowcount
            with self._kernel_lock():
                restored = self._load_all(db)
        return Restored(restored, expired)

    # -- reads -----------------------------------------------------------------------------

    def list(self) -> Blocks:
        """Active blocks joined with what the kernel holds; reads only."""
        now = self.clock()
        with statedb.connect(self.state_dir, create=False) as db:
            rows = [] if db is None else db.execute(
                "SELECT addr, until, rule, reason, origin, created FROM blocks WHERE until > ? "
                "ORDER BY created, addr", (now,)).fetchall()
        elements = self.nft.elements()
        singles = {e.net: e for e in elements if not e.in_prefix_set}
        pieces = [e for e in elements if e.in_prefix_set]
        out: Blocks = []
        claimed: set[tuple[Network, bool]] = set()
        for addr, until, rule, reason, origin, created in rows:
            try:
                net = ipaddress.ip_network(addr)
            except ValueError:  # not written by us: never enforced, not ours to show
                continue
            if is_address(net):
                found = [singles[net]] if net in singles else []
                ok = bool(found)
            else:  # the layout's pieces inside it (or one piece around it) cover all of it
                found = [e for e in pieces if e.net.version == net.version
                         and e.net.overlaps(net)]
                ok = sum(min(e.net.num_addresses, net.num_addresses)
                         for e in found) >= net.num_addresses
            claimed.update((e.net, e.in_prefix_set) for e in found)
            expiries = [e.expires_s for e in found if e.expires_s is not None]
            out.append(Block(addr, "active" if ok else "missing", until, rule, reason, origin,
                             created, min(expiries) if ok and expiries else None))
        out += [Block(format_net(e.net), "untracked", None, "", "", "", None, e.expires_s)
                for e in elements if (e.net, e.in_prefix_set) not in claimed]
        return out

    # -- plumbing --------------------------------------------------------------------------

    def _load_all(self, db: sqlite3.Connection) -> int:
        """Load every unexpired row into the kernel, replacing what it held; the count."""
        now = self.clock()
        rows = self._rows(db, now)
        entries = [(n, u - now) for n, u in rows if is_address(n)]
        for v in (4, 6):
            entries += [(n, u - now) for n, u in layout(
                [(n, u) for n, u in rows if not is_address(n) and n.version == v])]
        self.nft.load(entries)
        self._ensured = True
        return len(rows)

    def _enforce(self, db: sqlite3.Connection, net: Network) -> None:
        """Bring the kernel in line with the rows for ``net``. When our table has vanished
        (``nft flush ruleset``, e.g. by a restart of nftables.service), every block is loaded
        again, not only this one."""
        if not self._ensured:
            self.nft.ensure()
            self._ensured = True
        try:
            self._enforce_one(db, net)
        except NftError as e:
            if not e.missing:
                raise
            self._load_all(db)

    def _enforce_one(self, db: sqlite3.Connection, net: Network) -> None:
        """An address gets its element with the TTL left; a prefix rewrites its version's
        prefix layout."""
        now = self.clock()
        if is_address(net):
            row = db.execute("SELECT until FROM blocks WHERE addr = ?",
                             (format_net(net),)).fetchone()
            if row is not None and row[0] > now:
                self.nft.add(net, row[0] - now)
            return
        rows = [(n, u) for n, u in self._rows(db, now, prefixes=True)
                if not is_address(n) and n.version == net.version]
        self.nft.load_networks(net.version, [(n, u - now) for n, u in layout(rows) if u > now])

    def _rows(self, db: sqlite3.Connection, now: float, *, prefixes: bool = False) -> Rows:
        """Unexpired rows (only the prefixes: those have a '/'), as networks."""
        query = "SELECT addr, until FROM blocks WHERE until > ?"
        out: Rows = []
        for addr, until in db.execute(query + (" AND instr(addr, '/') > 0" if prefixes else ""),
                                      (now,)):
            try:
                out.append((ipaddress.ip_network(addr), until))
            except ValueError:  # not written by us (we write canonical text): never enforced
                continue
        return out

    def _covering(self, db: sqlite3.Connection, net: Network) -> tuple[str, ...]:
        keys = [format_net(net.supernet(new_prefix=p)) for p in range(net.prefixlen)]
        if not keys:
            return ()
        marks = ",".join("?" * len(keys))
        return tuple(r[0] for r in db.execute(
            f"SELECT addr FROM blocks WHERE until > ? AND addr IN ({marks})",  # noqa: S608
            (self.clock(), *keys)))

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with statedb.connect(self.state_dir) as db:
            assert db is not None  # create=True
            yield db

    @contextlib.contextmanager
    def _kernel_lock(self) -> Iterator[None]:
        path = os.path.join(self.state_dir, LOCK_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)



